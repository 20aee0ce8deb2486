-- proxy_remove.lua: remove a proxy from its pool and from every index. Its live
-- leases stop counting: their records no longer match a proxy (release says
-- not_found) and reclaim drops them without giving a slot back.
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
-- Cost: O(t log n), t = the proxy's index tags (at most 6).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'proxies'
  or not is_uuid(ARGV[2]) or KEYS[3] ~= prefix .. 'proxy:' .. ARGV[2] then
  return fail('keys do not match the pool prefix')
end
local old = snapshot(prefix, ARGV[2])
if not old then return 0 end
account(prefix, ARGV[2], old, nil)
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
