-- release.lua: give a lease back, at most once.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:leases            live leases by expiry ms
-- KEYS[3]  <ns>:{<pool>}:lease:<lease-id>  the lease record
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  lease id (uuid)
-- ARGV[3]  record grace ms
--
-- Reply: 'released'          it was live; its slot is free again
--        'already_released'  released before; nothing changed
--        'expired'           it had expired; its slot was (or is now) given back once
--        'not_found'         no record, another pool's record (the pool was removed
--                            and created again), or its proxy was removed
-- Publishes on `<prefix>freed` when a slot is given back (waiting acquires).
-- Errors (nothing written): bad arguments.
--
-- Cost: O(t log n), t = the proxy's index tags (at most 6), n = pool size.

local now = now_ms()
local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'leases'
  or KEYS[3] ~= prefix .. 'lease:' .. tostring(ARGV[2]) then
  return fail('keys do not match the pool prefix')
end
if not is_uuid(ARGV[2]) then return fail('bad lease id') end
local grace = int_in(ARGV[3], 0, 315360000000)
if not grace then return fail('bad grace') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return 'not_found' end
local rec = redis.call('HMGET', KEYS[3], 'pool_id', 'proxy_id', 'proxy_seq', 'status', 'expires_at_ms')
if not rec[1] or rec[1] ~= meta[1] or not is_uuid(rec[2]) then return 'not_found' end
local proxy = snapshot(prefix, rec[2])
if not proxy or fmt_int(proxy.seq) ~= rec[3] then return 'not_found' end

local status = rec[4]
if status == 'released' then return 'already_released' end
if status == 'expired' then return 'expired' end
local expires = tonumber(rec[5] or '0') or 0
if expires <= now then
  redis.call('HSET', KEYS[3], 'status', 'expired')
  redis.call('PEXPIREAT', KEYS[3], math.max(expires, now) + grace)
else
  redis.call('HSET', KEYS[3], 'status', 'released', 'released_at_ms', now)
end
-- Only a lease still in the live set holds a slot (reclaim may have taken it out).
if redis.call('ZREM', KEYS[2], ARGV[2] .. ':' .. rec[3]) == 1 then
  redis.call('ZREM', prefix .. 'holders', ARGV[2])
  give_back(prefix, rec[2], proxy)
  notify_freed(prefix)
end
if expires <= now then return 'expired' end
return 'released'
