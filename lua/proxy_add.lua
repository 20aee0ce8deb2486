-- proxy_add.lua: add proxies to one pool, all or none, with current_leases 0.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxies   every proxy by insertion sequence
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  pool id (uuid): the proxies' pool_id, must be the pool's id
-- ARGV[3]  number n of proxies (1..10000), then per proxy:
--          id (uuid), index tags (space-separated `<attribute>=<percent-encoded>`),
--          field count f (0..15), then f (field, value) pairs of: host, port,
--          protocol, status, max_concurrency, username, password, source,
--          country, city, isp, asn, latitude, longitude, checked_at
--
-- Reply: {'OK'} | {'POOL_NOT_FOUND'} | {'POOL_MISMATCH', pool's id}
--        | {'EXISTS', proxy id}
-- Errors (nothing written): bad arguments (every proxy is checked first).
--
-- Cost: O(n t log N): n proxies, t index tags each, N pool size.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'proxies' then
  return fail('keys do not match the pool prefix')
end
if not is_uuid(ARGV[2]) then return fail('bad pool id') end
local n = int_in(ARGV[3], 1, 10000)
if not n then return fail('bad proxy count') end
local proxies, next_at = read_proxies(n, 4)
if not proxies then return fail(next_at) end
if next_at ~= #ARGV + 1 then return fail('trailing arguments') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return { 'POOL_NOT_FOUND' } end
if meta[1] ~= ARGV[2] then return { 'POOL_MISMATCH', meta[1] } end
local seen = {}
for _, p in ipairs(proxies) do
  if seen[p.id] or redis.call('EXISTS', prefix .. 'proxy:' .. p.id) == 1 then
    return { 'EXISTS', p.id }
  end
  seen[p.id] = true
end

for _, p in ipairs(proxies) do
  local seq = redis.call('HINCRBY', KEYS[1], 'next_seq', 1)
  local key = prefix .. 'proxy:' .. p.id
  write_proxy_fields(key, p.fields)
  redis.call('HSET', key, 'id', p.id, 'pool_id', ARGV[2], 'seq', seq, 'current_leases', 0,
    'tags', p.tags)
  redis.call('ZADD', KEYS[2], seq, p.id)
  for tag in string.gmatch(p.tags, '%S+') do
    redis.call('SADD', prefix .. 'tags', tag)
  end
  account(prefix, p.id, nil, snapshot(prefix, p.id))
end
notify_freed(prefix)
return { 'OK' }
