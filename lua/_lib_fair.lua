-- _lib_fair.lua: the queue of fair waiters (joined after _lib_acquire.lua and
-- _lib_proxy.lua; see src/fair.rs). Functions of STRAIGHT, no locals: the
-- chunk's 200 locals are spent.
--
--   P tickets         zset  tickets by number (member and score): the queue, head first
--   P tickets:until   zset  the same tickets by when each lapses unless refreshed (ms)
--   P meta `ticket`         the last number issued
--
-- A ticket number is the later of the last one issued plus one and Redis's
-- clock in µs: numbers increase, and a pool created again never reuses one of
-- an earlier pool's waiters. A ticket is honoured while its `until` is after
-- now; a lapsed one is dropped by the next attempt of any fair waiter.

-- A ticket number argument: decimal, no leading zero, 1..2^53-1.
function STRAIGHT.ticket_ok(s)
  return is_token(s) and string.byte(s, 1) ~= 48 and tonumber(s) <= 9007199254740991
end

-- Whether KEYS[k] and KEYS[k + 1] are the queue's keys of pool P (the
-- library sends them as KEYS[3] and KEYS[4], once per call).
function STRAIGHT.ticket_keys_ok(k)
  return k >= 3 and k + 1 <= #KEYS and KEYS[k] == P .. STRAIGHT.K_TICKETS
    and KEYS[k + 1] == P .. STRAIGHT.K_TICKET_ENDS
end

-- Drops up to 16 tickets of queue `q` (lapse times in `ends`) that lapsed by
-- `now_s` (ms, decimal). ZRANGEBYSCORE, and ZREM of each key when some did.
function STRAIGHT.drop_lapsed(q, ends, now_s)
  local lapsed = redis.call('ZRANGEBYSCORE', ends, '-inf', now_s, 'LIMIT', 0, 16)
  if lapsed[1] then
    redis.call('ZREM', q, unpack(lapsed))
    redis.call('ZREM', ends, unpack(lapsed))
  end
end

-- An acquire of request `r`, which holds ticket r.tick_s (its queue's keys at
-- KEYS[r.tickk] and KEYS[r.tickk + 1]), honoured r.tick_ms after each attempt:
-- drops lapsed tickets, refreshes this one (one that lapsed is queued again in
-- its place: its waiter was slow, not dead), and says whether it is the head.
-- Notes in r.tick_more whether another ticket waits behind the head.
-- ZRANGEBYSCORE, ZADD, ZRANGE (and ZREM ×2 when some lapsed, ZADD when this
-- one had): 3.
function STRAIGHT.ticket_turn(r)
  local q, ends = KEYS[r.tickk], KEYS[r.tickk + 1]
  STRAIGHT.drop_lapsed(q, ends, NOW_S)
  if redis.call('ZADD', ends, fmt_int(NOW + r.tick_ms), r.tick_s) == 1 then
    redis.call('ZADD', q, r.tick_s, r.tick_s)
  end
  local first = redis.call('ZRANGE', q, 0, 1)
  r.tick_more = first[2] ~= nil
  return first[1] == r.tick_s
end

-- Request `r` was granted a lease: its ticket leaves the queue, and when
-- another waits behind it, waiters are woken (the next one may be served
-- too). ZREM ×2 (and PUBLISH).
function STRAIGHT.ticket_done(r)
  redis.call('ZREM', KEYS[r.tickk], r.tick_s)
  redis.call('ZREM', KEYS[r.tickk + 1], r.tick_s)
  if r.tick_more then notify(WAIT_UNTIL, NOW) end
end

-- Request `r` was served without a grant (its request id's earlier lease):
-- its ticket leaves the queue all the same, and when another waits, waiters
-- are woken. ZREM ×2, ZCARD (and PUBLISH).
function STRAIGHT.ticket_leave(r)
  redis.call('ZREM', KEYS[r.tickk], r.tick_s)
  redis.call('ZREM', KEYS[r.tickk + 1], r.tick_s)
  if redis.call('ZCARD', KEYS[r.tickk]) > 0 then notify(WAIT_UNTIL, NOW) end
end
