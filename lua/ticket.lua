-- ticket.lua: a fair waiter takes a ticket at the end of its pool's queue (and
-- says that it waits, as wait.lua does), or leaves the queue (see
-- _lib_fair.lua for the queue, src/fair.rs for what it guarantees).
--
-- KEYS[1]  P meta     KEYS[2]  P tickets     KEYS[3]  P tickets:until
-- ARGV[1]  pool prefix P
-- ARGV[2]  'take', then ARGV[3] how long the ticket is honoured without a
--          refresh, ms (1..MAX_LEASE_MS), and ARGV[4] how long its holder will
--          wait, ms (1..MAX_LEASE_MS)
--       or 'drop', then ARGV[3] the ticket's number
--
-- Reply: take: {'OK', number, honoured until ms}; drop: {'OK'}
--     or {'POOL_NOT_FOUND'} (no such pool, or being removed) or {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: take: HMGET meta, TIME, ZRANGEBYSCORE (lapsed tickets; ZREM of each
-- key when some), HSET meta (`ticket`, and `wait_until` when it moves later),
-- ZADD of each key: 6. drop: HMGET meta, ZRANGE (the first two), ZREM of each
-- key; when the head left with a ticket behind it, TIME and PUBLISH on P freed
-- (the next waiter may be served at once). Cost O(log n) in the queue's length.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) or KEYS[2] ~= prefix .. STRAIGHT.K_TICKETS
  or KEYS[3] ~= prefix .. STRAIGHT.K_TICKET_ENDS then
  return fail('keys do not match the pool prefix')
end
local op = ARGV[2]
if op == 'take' then
  if #ARGV ~= 4 or not int_in(ARGV[3], 1, MAX_LEASE_MS) or not int_in(ARGV[4], 1, MAX_LEASE_MS) then
    return fail('bad ticket arguments')
  end
elseif op == 'drop' then
  if #ARGV ~= 3 or not STRAIGHT.ticket_ok(ARGV[3]) then return fail('bad ticket') end
else
  return fail('bad ticket operation')
end
local m, why, found = read_meta(KEYS[1], 'ticket', 'wait_until')
if not m then return { why, found } end

if op == 'drop' then
  local n = ARGV[3]
  local first = redis.call('ZRANGE', KEYS[2], 0, 1)
  redis.call('ZREM', KEYS[2], n)
  redis.call('ZREM', KEYS[3], n)
  if first[1] == n and first[2] then notify(m[5], clock()) end
  return { 'OK' }
end

local now, now_us, now_s = clock()
STRAIGHT.drop_lapsed(KEYS[2], KEYS[3], now_s)
local number = (tonumber(m[4] or '') or 0) + 1
if now_us > number then number = now_us end
local n = fmt_int(number)
local until_ms = now + int_in(ARGV[3], 1, MAX_LEASE_MS)
local wait_until = now + int_in(ARGV[4], 1, MAX_LEASE_MS)
if (tonumber(m[5] or '') or 0) < wait_until then
  redis.call('HSET', KEYS[1], 'ticket', n, 'wait_until', fmt_int(wait_until))
else
  redis.call('HSET', KEYS[1], 'ticket', n)
end
redis.call('ZADD', KEYS[2], n, n)
redis.call('ZADD', KEYS[3], fmt_int(until_ms), n)
return { 'OK', number, until_ms }
