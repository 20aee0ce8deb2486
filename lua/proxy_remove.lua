-- proxy_remove.lua: remove a proxy from its pool and from every index. Its live
-- leases end with it: they leave the live set and the holders index, and their
-- records no longer match a proxy (release says not_found; records expire by TTL).
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxies
-- KEYS[3]  <ns>:{<pool>}:proxy:<id>
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  proxy id (uuid)
--
-- Reply: 1 when it existed and is removed, else 0.
-- Errors (nothing written): bad arguments.
--
-- Cost: O((t + h) log n), t = the proxy's index tags (at most 6), h = its live leases.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'proxies'
  or not is_uuid(ARGV[2]) or KEYS[3] ~= prefix .. 'proxy:' .. ARGV[2] then
  return fail('keys do not match the pool prefix')
end
local old = snapshot(prefix, ARGV[2])
if not old then return 0 end
account(prefix, ARGV[2], old, nil)
-- Its live leases end with it: they leave the live set now (a later release
-- reports not_found), so the pool's lease count stays exact.
local holders = redis.call('ZRANGEBYSCORE', prefix .. 'holders', old.seq, old.seq)
for _, lease_id in ipairs(holders) do
  redis.call('ZREM', prefix .. 'holders', lease_id)
  redis.call('ZREM', prefix .. 'leases', lease_id .. ':' .. fmt_int(old.seq))
end
redis.call('ZREM', prefix .. 'cooldown', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
