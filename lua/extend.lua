-- extend.lua: renew a live lease: it now expires `duration` from now (Redis
-- time), in the live set, in its record and in the record's TTL.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:leases            live leases by expiry ms
-- KEYS[3]  <ns>:{<pool>}:lease:<lease-id>  the lease record
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  lease id (uuid)
-- ARGV[3]  duration ms (1..604800000)
-- ARGV[4]  record grace ms
--
-- Reply: {'OK', expires_at_ms}
--     or {'LOST', 'released' | 'expired' | 'unknown'}: not held any more; nothing
--        written (an expired lease keeps waiting for reclaim, which gives its slot
--        back exactly once)
-- Errors (nothing written): bad arguments.
--
-- Cost: O(log n).

local now = now_ms()
local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'leases'
  or KEYS[3] ~= prefix .. 'lease:' .. tostring(ARGV[2]) then
  return fail('keys do not match the pool prefix')
end
if not is_uuid(ARGV[2]) then return fail('bad lease id') end
local duration = int_in(ARGV[3], 1, 604800000)
local grace = int_in(ARGV[4], 0, 315360000000)
if not duration or not grace then return fail('bad numeric argument') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return { 'LOST', 'unknown' } end
local rec = redis.call('HMGET', KEYS[3], 'pool_id', 'proxy_seq', 'status', 'expires_at_ms')
if not rec[1] or rec[1] ~= meta[1] then return { 'LOST', 'unknown' } end
if rec[3] == 'released' then return { 'LOST', 'released' } end
if rec[3] ~= 'active' then return { 'LOST', 'expired' } end
local expires = tonumber(rec[4] or '0') or 0
local member = ARGV[2] .. ':' .. rec[2]
if expires <= now or not redis.call('ZSCORE', KEYS[2], member) then
  return { 'LOST', 'expired' }
end
local new_expiry = now + duration
redis.call('ZADD', KEYS[2], 'XX', new_expiry, member)
redis.call('HSET', KEYS[3], 'expires_at_ms', new_expiry)
redis.call('PEXPIREAT', KEYS[3], new_expiry + grace)
return { 'OK', fmt_int(new_expiry) }
