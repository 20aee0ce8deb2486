-- cleanup.lua: give back the slots of one pool's due leases, in a bounded batch
-- (and lift the cooldowns that are over, as many). Lease records are not
-- rewritten: an active record past its expiry reads as expired; each gets the
-- record grace as its TTL (a live lease's record has none). The batch goes in chunks of LIMITS.CLEANUP_CHUNK leases, and the call
-- stops after the chunk that takes it past LIMITS.CLEANUP_BUDGET_US of Redis's time
-- (both from src/redis/keys.rs): no call blocks Redis for long, whatever the
-- batch and however loaded the machine (then `more` says to call again).
--
-- KEYS[1]  P meta   KEYS[2]  P live
-- ARGV[1]  pool prefix P
-- ARGV[2]  most leases to reclaim in this call (1..MAX_RECLAIM)
-- ARGV[3]  record grace ms (0..MAX_GRACE_MS): a reclaimed lease's record is kept
--          this long (to answer its release `expired`)
--
-- Reply: {reclaimed, more}: how many leases gave their slot back, and 1 when more
-- due leases or cooldowns over remain (call again), else 0. {0, 0} when the pool is gone.
-- Publishes on P freed when it freed anything and a waiter announced itself.
-- Errors (nothing written): bad arguments.
--
-- Calls for each chunk of due leases: ZRANGEBYSCORE, ZMSCORE load (a proxy in
-- the indexes gets its count lowered straight from it, see
-- STRAIGHT.reclaim_indexed; for the others HMGET proxies when their JSON is not
-- remembered, ZMSCORE load and HMGET held), ZREM live, PEXPIRE per record (DEL
-- with no grace), ZCOUNT and ZRANGE live, one command per index key touched,
-- TIME; once per call: TIME, HMGET meta (twice the first time this library
-- sees the pool), HSET meta. Cost O(b log N).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) or KEYS[2] ~= prefix .. K_LIVE then
  return fail('keys do not match the pool prefix')
end
local limit = int_in(ARGV[2], 1, MAX_RECLAIM)
local grace = STRAIGHT.grace(ARGV[3])
if not limit or not grace then return fail('bad numeric argument') end

-- The pool's fixed settings and the proxy JSONs the library remembers (so
-- that a reclaim reads only those it does not: see STRAIGHT.reclaim_indexed).
local m = open_pool('exp', 'cool_next', 'wait_until')
if not m then return { 0, 0 } end
local now, start_us = clock()
local lifted, cool_first = 0, tonumber(m[5] or '')
if cool_first and cool_first <= now then lifted, cool_first = lift_cooldowns(now, limit) end
local n, more, first = 0, false, nil
repeat
  local k, chunk_more, chunk_first = reclaim(now, math.min(LIMITS.CLEANUP_CHUNK, limit - n),
    grace)
  n, more, first = n + k, chunk_more, chunk_first
  flush()
  if not more or n >= limit then break end
  local _, now_us = clock()
until now_us - start_us >= LIMITS.CLEANUP_BUDGET_US
-- More cooldowns over than one call lifts are more work too.
more = more or (cool_first ~= nil and cool_first <= now)
local set, del = {}, {}
local function hint(field, old, new)
  if new == old then return end
  if new then
    set[#set + 1] = field
    set[#set + 1] = fmt_int(new)
  else
    del[#del + 1] = field
  end
end
hint('exp', tonumber(m[4] or ''), first)
hint('cool_next', tonumber(m[5] or ''), cool_first)
if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
if n + lifted > 0 then notify(m[6], now) end
if more then return { n, 1 } end
return { n, 0 }
