-- proxy_add.lua: add proxies to one pool, all or none, with no leases.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  pool id: must be the pool's id
-- ARGV[3..] one JSON per proxy (1..MAX_ADD), as _lib_proxy.lua describes
--
-- Reply: {'OK', first_seq} (the proxies got first_seq, first_seq + 1, ... in
--        order) | {'POOL_NOT_FOUND'} | {'POOL_MISMATCH', pool's id}
--        | {'EXISTS', proxy id} | {'SCHEMA', found}
-- Errors (nothing written): bad arguments (every proxy is checked first).
--
-- Calls: HMGET meta, one HMGET per ids shard touched, then one HSET proxies, one
-- HSET per ids shard, one ZADD and one ZREM per index key (the ZREM takes out the
-- member that made the index a skiplist, see flush()), SADD tags, HSET meta
-- (next_seq and the counters `proxies`, `active` and `banned`). Cost O(n log N)
-- for n proxies.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
if not is_uuid(ARGV[2]) then return fail('bad pool id') end
local n = #ARGV - 2
if n < 1 or n > LIMITS.MAX_ADD then return fail('bad proxy count') end
local ps, seen = {}, {}
for i = 1, n do
  local p, err = check_proxy_json(ARGV[2 + i], false)
  if not p then return fail(err .. ' (proxy #' .. (i - 1) .. ')') end
  if seen[p.id] then return { 'EXISTS', p.id } end
  seen[p.id] = true
  ps[i] = p
end

local m, why, found = read_meta(KEYS[1], 'next_seq', 'proxies', 'active', 'attrs', 'orders', 'wait_until',
  'banned')
if not m then return { why, found } end
if m[2] ~= ARGV[2] then return { 'POOL_MISMATCH', m[2] } end
read_settings(m[2], m[7], m[8])
-- Ids already in this pool (one read per shard).
local shards = {}
for _, p in ipairs(ps) do
  local k = ids_key(p.id)
  local s = shards[k]
  if not s then s = {}; shards[k] = s end
  s[#s + 1] = p.id
end
for k, list in pairs(shards) do
  local got = redis.call('HMGET', k, unpack(list))
  for i, v in ipairs(got) do
    if v then return { 'EXISTS', list[i] } end
  end
end

local next_seq = tonumber(m[4] or '0') or 0
local first = next_seq + 1
local active = tonumber(m[6] or '0') or 0
local banned = tonumber(m[10] or '0') or 0
local writes, infos, eligible = {}, {}, false
for i, p in ipairs(ps) do
  next_seq = next_seq + 1
  local mem = fmt_int(next_seq)
  local st = touch(mem, ARGV[2 + i], 0, false)
  st.dirty = true
  wmap('pj')[mem] = ARGV[2 + i]
  infos[#infos + 1] = st.info
  if p.status == nil then active = active + 1 end
  if p.status == 'banned' then banned = banned + 1 end
  if st.info.ok then eligible = true end
  local k = ids_key(p.id)
  local w = writes[k]
  if not w then w = {}; writes[k] = w end
  w[#w + 1] = p.id
  w[#w + 1] = mem
end
for k, w in pairs(writes) do redis.call('HSET', k, unpack(w)) end
flush(true)
remember_tags(infos)
redis.call('HSET', KEYS[1], 'next_seq', fmt_int(next_seq),
  'proxies', fmt_int((tonumber(m[5] or '0') or 0) + n), 'active', fmt_int(active),
  'banned', fmt_int(banned))
if eligible then notify(m[9], clock()) end
return { 'OK', first }
