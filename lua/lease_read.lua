-- lease_read.lua: lease records of one pool with their proxies, read
-- atomically; read-only.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  'get', then ARGV[3] a lease's token
--       or 'list', then ARGV[3] the first rank in the live set, ARGV[4] how many (1..10000)
--
-- Reply: {'OK', now_ms, more, pool id, token, record, proxy seq, proxy json, ...}:
-- records as _lib.lua writes them, each with its proxy (a lease whose record or
-- proxy is gone is left out); `more` is 1 when 'list' has more ranks. Or
-- {'NOT_FOUND'} / {'SCHEMA', found}.
--
-- Calls: HMGET meta, TIME, GET (or ZRANGE and MGET), HMGET proxies. Cost
-- O(k log L) for k leases.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local m, why, found = read_meta(KEYS[1], 'created')
if not m then return { why == 'SCHEMA' and 'SCHEMA' or 'NOT_FOUND', found } end
local pool_id, created = m[2], tonumber(m[4] or '0') or 0
local ids, more = {}, 0
if ARGV[2] == 'get' then
  if not is_token(ARGV[3]) then return fail('bad lease token') end
  if tonumber(ARGV[3]) >= created then ids[1] = ARGV[3] end
elseif ARGV[2] == 'list' then
  local start, count = int_in(ARGV[3], 0, 9007199254740991), int_in(ARGV[4], 1, 10000)
  if not start or not count then return fail('bad list arguments') end
  local live = redis.call('ZRANGE', P .. K_LIVE, start, start + count)
  if #live > count then
    more = 1
    live[#live] = nil
  end
  for _, member in ipairs(live) do
    local tok = string.match(member, ':(%d+)$')
    if tok then ids[#ids + 1] = tok end
  end
else
  return fail('bad mode')
end
local now = clock()
local out = { 'OK', now, more, pool_id }
if #ids == 0 then return out end
local keys = {}
for i, id in ipairs(ids) do keys[i] = P .. id end
local recs = redis.call('MGET', unpack(keys))
local seqs, parsed = {}, {}
for i, v in ipairs(recs) do
  local r = v and parse_record(v)
  if r then
    parsed[i] = r
    seqs[#seqs + 1] = r.seq
  end
end
if #seqs == 0 then return out end
local js = redis.call('HMGET', P .. K_PROXIES, unpack(seqs))
local k = 0
for i, id in ipairs(ids) do
  local r = parsed[i]
  if r then
    k = k + 1
    if js[k] then
      out[#out + 1] = id
      out[#out + 1] = recs[i]
      out[#out + 1] = tonumber(r.seq)
      out[#out + 1] = js[k]
    end
  end
end
return out
