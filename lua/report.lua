-- report.lua: record a success or a failure with a proxy. A success resets its
-- failure count and lifts a cooldown. A failure counts one more in a row and
-- either puts the proxy in cooldown (out of the availability indexes, in the
-- `cooldown` set until acquire or cleanup lifts it) or, at the ban threshold,
-- sets its status to banned.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxy:<id>
-- KEYS[3]  <ns>:{<pool>}:cooldown      proxies cooling down, by cooldown end ms
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  proxy id (uuid)
-- ARGV[3]  'success' or 'failure'
-- ARGV[4]  base cooldown ms (1..604800000)   ARGV[5]  cap ms (base..604800000)
-- ARGV[6]  jitter in thousandths (0..1000)  ARGV[7]  random 0..1000000 (picks the jitter)
-- ARGV[8]  failures in a row that ban the proxy (0 = never)
-- ARGV[9]  failure reason (0..256 bytes, no control characters)
--
-- Reply: {'OK', consecutive_failures, cooldown_until_ms or '', status}
--     or {'NOT_FOUND'} (no such pool or proxy; nothing written)
-- Errors (nothing written): bad arguments.
--
-- Cost: O(t log n), t = the proxy's index tags.

local now = now_ms()
local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or not is_uuid(ARGV[2])
  or KEYS[2] ~= prefix .. 'proxy:' .. ARGV[2] or KEYS[3] ~= prefix .. 'cooldown' then
  return fail('keys do not match the pool prefix')
end
local mode = ARGV[3]
if mode ~= 'success' and mode ~= 'failure' then return fail('bad mode') end
local base = int_in(ARGV[4], 1, 604800000)
local cap = int_in(ARGV[5], 1, 604800000)
local jitter = int_in(ARGV[6], 0, 1000)
local rnd = int_in(ARGV[7], 0, 1000000)
local ban_after = int_in(ARGV[8], 0, MAX_U32)
if not base or not cap or cap < base or not jitter or not rnd or not ban_after then
  return fail('bad numeric argument')
end
local reason = ARGV[9]
if type(reason) ~= 'string' or #reason > 256 or string.find(reason, '%c') then
  return fail('bad reason')
end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing', 'cool_next')
if not meta[1] or meta[2] then return { 'NOT_FOUND' } end
local id = ARGV[2]
local s = snapshot(prefix, id)
if not s then return { 'NOT_FOUND' } end

if mode == 'success' then
  redis.call('HSET', KEYS[2], 'consecutive_failures', 0)
  if s.cooling then
    redis.call('HDEL', KEYS[2], 'cooldown_until_ms')
    redis.call('ZREM', KEYS[3], id)
    account(prefix, id, s, with_cooling(s, false))
    notify_freed(prefix)
  end
  return { 'OK', 0, '', s.status }
end

local failures = redis.call('HINCRBY', KEYS[2], 'consecutive_failures', 1)
redis.call('HSET', KEYS[2], 'last_failure', reason)
if ban_after > 0 and failures >= ban_after then
  redis.call('HSET', KEYS[2], 'status', 'banned')
  redis.call('HDEL', KEYS[2], 'cooldown_until_ms')
  redis.call('ZREM', KEYS[3], id)
  local banned = with_cooling(s, false)
  banned.status = 'banned'
  banned.active = false
  banned.available = false
  account(prefix, id, s, banned)
  return { 'OK', failures, '', 'banned' }
end
local full = math.min(cap, base * 2 ^ math.min(failures - 1, 62))
local delay = math.max(1, math.floor(full - full * (jitter / 1000) * (rnd / 1000000)))
local until_ms = now + delay
redis.call('HSET', KEYS[2], 'cooldown_until_ms', until_ms)
redis.call('ZADD', KEYS[3], until_ms, id)
-- Acquires lift cooldowns only once the pool's `cool_next` hint is due.
local hint = tonumber(meta[3] or '')
if hint == nil or until_ms < hint then
  redis.call('HSET', KEYS[1], 'cool_next', fmt_int(until_ms))
end
if not s.cooling then
  account(prefix, id, s, with_cooling(s, true))
end
return { 'OK', failures, fmt_int(until_ms), s.status }
