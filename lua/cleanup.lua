-- cleanup.lua: expire one pool's due leases, in a bounded batch (and lift the
-- cooldowns that are over, as many).
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:leases   live leases by expiry ms
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  most leases to expire in this call (1..100000)
-- ARGV[3]  record grace ms
--
-- Reply: {expired, more}: how many leases gave their slot back, and 1 when
-- more due leases remain (call again), else 0. {0, 0} when the pool is gone.
-- Publishes on `<prefix>freed` when it freed anything (waiting acquires).
-- Errors (nothing written): bad arguments.
--
-- Cost: O(b log n) for a batch of b leases: callers loop, so Redis is never
-- blocked for long whatever the backlog.

local now = now_ms()
local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'leases' then
  return fail('keys do not match the pool prefix')
end
local limit = int_in(ARGV[2], 1, 100000)
local grace = int_in(ARGV[3], 0, 315360000000)
if not limit or not grace then return fail('bad numeric argument') end
if redis.call('EXISTS', KEYS[1]) == 0 then return { 0, 0 } end
local lifted = lift_cooldowns(prefix, now, limit)
local n, more = reclaim(prefix, now, limit, grace)
if n > 0 or lifted > 0 then notify_freed(prefix) end
return { n, b(more) }
