#!lua flags=no-writes
-- stats.lua: one pool's stats as set sizes, read atomically. Read-only (flag
-- no-writes), so Redis runs it even when it is out of memory, when the sweeper's
-- gauges matter most. Standalone: no shared helpers (a shebang must come first).
--
-- KEYS[1] <ns>:{<pool>}:meta      KEYS[2] <ns>:{<pool>}:proxies
-- KEYS[3] <ns>:{<pool>}:active    KEYS[4] <ns>:{<pool>}:avail:seq:all
-- KEYS[5] <ns>:{<pool>}:leased    KEYS[6] <ns>:{<pool>}:holders
--
-- Reply: {'OK', proxies, active, available, leased, live leases}
--     or {'NOT_FOUND'} (no such pool, or being removed)
--
-- Cost: O(1).

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return { 'NOT_FOUND' } end
return { 'OK', redis.call('ZCARD', KEYS[2]), redis.call('SCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]), redis.call('SCARD', KEYS[5]), redis.call('ZCARD', KEYS[6]) }
