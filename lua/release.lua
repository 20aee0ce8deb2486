-- release.lua: give leases of one pool back, each at most once. The storage
-- sends concurrent releases on one pool as one call.
--
-- KEYS[1]    <ns>:{<pool>}:meta
-- KEYS[2]    <ns>:{<pool>}:leases            live leases by expiry ms
-- KEYS[2+i]  <ns>:{<pool>}:lease:<lease-id>  the record of lease i (1..n)
-- ARGV[1]    pool prefix `<ns>:{<pool>}:`
-- ARGV[2]    record grace ms
-- ARGV[2+i]  lease id i (a UUID; checked for its shape: 36 bytes, dashes, no
--            ':'), n = #ARGV - 2 (1..1000)
--
-- Reply: one outcome per lease, in order:
--        'released'          it was live; its slot is free again
--        'already_released'  released before; nothing changed
--        'expired'           it had expired; its slot was (or is now) given back once
--        'not_found'         no record, another pool's record (the pool was removed
--                            and created again), or its proxy was removed
-- Publishes on `<prefix>freed` once when a slot is given back (waiting acquires).
-- Errors (nothing written): bad arguments.
--
-- Cost: O(t log n) per lease, t = its proxy's index tags (at most 6), n = pool size.

local now = now_ms()
local prefix = ARGV[1]
local nlease = #ARGV - 2
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'leases'
  or nlease < 1 or nlease > 1000 or #KEYS ~= nlease + 2 then
  return fail('keys do not match the pool prefix')
end
local grace = int_in(ARGV[2], 0, 315360000000)
if not grace then return fail('bad grace') end
local lease_prefix = prefix .. 'lease:'
for i = 1, nlease do
  local id = ARGV[2 + i]
  if not is_id(id) then return fail('bad lease id') end
  if KEYS[2 + i] ~= lease_prefix .. id then return fail('keys do not match the pool prefix') end
end

local out = {}
local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then
  for i = 1, nlease do out[i] = 'not_found' end
  return out
end
local now_s = fmt_int(now)
local freed = false

-- Releases lease i: its outcome.
local function release(i)
  local lease_id, key = ARGV[2 + i], KEYS[2 + i]
  local rec = redis.call('HMGET', key, 'pool_id', 'proxy_id', 'proxy_seq', 'status', 'expires_at_ms')
  if not rec[1] or rec[1] ~= meta[1] or not is_id(rec[2]) then return 'not_found' end
  local proxy = snapshot(prefix, rec[2])
  if not proxy or fmt_int(proxy.seq) ~= rec[3] then return 'not_found' end

  local status = rec[4]
  if status == 'released' then return 'already_released' end
  if status == 'expired' then return 'expired' end
  local expires = tonumber(rec[5] or '0') or 0
  if expires <= now then
    redis.call('HSET', key, 'status', 'expired')
    redis.call('PEXPIREAT', key, fmt_int(math.max(expires, now) + grace))
  else
    redis.call('HSET', key, 'status', 'released', 'released_at_ms', now_s)
  end
  -- Only a lease still in the live set holds a slot (reclaim may have taken it out).
  if redis.call('ZREM', KEYS[2], lease_id .. ':' .. rec[3]) == 1 then
    redis.call('ZREM', prefix .. 'holders', lease_id)
    give_back(prefix, rec[2], proxy)
    freed = true
  end
  if expires <= now then return 'expired' end
  return 'released'
end

for i = 1, nlease do
  out[i] = release(i)
end
if freed then notify_freed(prefix) end
return out
