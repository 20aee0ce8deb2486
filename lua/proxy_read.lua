-- proxy_read.lua: proxies of one pool with their live lease counts, read
-- atomically; read-only.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  'ids', then ARGV[3..] proxy ids (1..MAX_ADD)
--       or 'scan', then ARGV[3] HSCAN cursor of P proxies, ARGV[4] count hint (1..10000)
--
-- Reply: {'OK', cursor, seq, json, live leases, ...}: for 'ids', cursor is '0'
-- and a proxy not in this pool is left out; for 'scan', cursor is the next one
-- ('0' when done). Or {'NOT_FOUND'} / {'SCHEMA', found}.
--
-- Calls: HMGET meta, one HMGET per ids shard (ids) or one HSCAN (scan), then
-- HMGET proxies, ZMSCORE load, HMGET held. Cost O(k log N) for k proxies.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local m, why, found = read_meta(KEYS[1], 'attrs', 'orders')
if not m then return { why == 'SCHEMA' and 'SCHEMA' or 'NOT_FOUND', found } end
read_settings(m[2], m[4], m[5])
local members, cursor = {}, '0'
if ARGV[2] == 'ids' then
  local n = #ARGV - 2
  if n < 1 or n > LIMITS.MAX_ADD then return fail('bad id count') end
  local shards = {}
  for i = 3, #ARGV do
    local id = ARGV[i]
    if not is_uuid(id) then return fail('bad proxy id') end
    local k = P .. K_IDS .. string.lower(string.sub(id, 1, 2))
    local s = shards[k]
    if not s then s = {}; shards[k] = s end
    s[#s + 1] = id
  end
  for k, list in pairs(shards) do
    for _, v in ipairs(redis.call('HMGET', k, unpack(list))) do
      if v then members[#members + 1] = v end
    end
  end
elseif ARGV[2] == 'scan' then
  local count = int_in(ARGV[4], 1, 10000)
  if type(ARGV[3]) ~= 'string' or not string.match(ARGV[3], '^%d+$') or not count then
    return fail('bad scan arguments')
  end
  local r = redis.call('HSCAN', P .. K_PROXIES, ARGV[3], 'COUNT', count)
  cursor = r[1]
  for i = 1, #r[2], 2 do members[#members + 1] = r[2][i] end
else
  return fail('bad mode')
end
local out = { 'OK', cursor }
if #members == 0 then return out end
load_states(members)
for _, mem in ipairs(members) do
  local st = T[mem]
  if st and st.j then
    out[#out + 1] = st.seq
    out[#out + 1] = st.j
    out[#out + 1] = st.n
  end
end
return out
