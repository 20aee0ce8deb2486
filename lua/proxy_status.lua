-- proxy_status.lua: set a proxy's status (status change or health-check result).
-- Live leases stay; only active proxies with a free slot are indexed as available.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxy:<id>
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  proxy id (uuid)
-- ARGV[3]  status: active | inactive | slow | banned
-- ARGV[4]  checked_at (RFC 3339) to record with a health result, or '' to keep it
-- ARGV[5]  latency ms measured by that health check, or '' to keep it (it orders
--          the lowest_latency selector's index)
--
-- Reply: {'OK', field, value, ...} (HGETALL of the proxy after the change)
--        | {'NOT_FOUND'}
-- Errors (nothing written): bad arguments.
--
-- Cost: O(t log n), t = the proxy's index tags (at most 6).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or not is_uuid(ARGV[2])
  or KEYS[2] ~= prefix .. 'proxy:' .. ARGV[2] then
  return fail('keys do not match the pool prefix')
end
if not PROXY_STATUS[ARGV[3]] then return fail('bad status') end
if ARGV[4] ~= '' and not is_text(ARGV[4], 64) then return fail('bad checked_at') end
if ARGV[5] ~= '' and not int_in(ARGV[5], 0, MAX_U32) then return fail('bad latency') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return { 'NOT_FOUND' } end
local old = snapshot(prefix, ARGV[2])
if not old then return { 'NOT_FOUND' } end
redis.call('HSET', KEYS[2], 'status', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'checked_at', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'latency_ms', ARGV[5]) end
account(prefix, ARGV[2], old, snapshot(prefix, ARGV[2]))
notify_freed(prefix)
local all = redis.call('HGETALL', KEYS[2])
table.insert(all, 1, 'OK')
return all
