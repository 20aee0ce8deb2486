-- acquire.lua: serve n acquire requests on one pool in one atomic step: first
-- give back what time freed (due leases, over cooldowns; only when the meta's
-- hints say so), then for each request in arrival order pick an available
-- proxy that matches, count the lease and record it.
--
-- KEYS[1]    P meta        KEYS[2]  P live
-- KEYS[3]    P tickets   KEYS[4]  P tickets:until   only when a request holds a
--            fair waiter's ticket
-- KEYS[3..]  (or KEYS[5..] after those) per request, in order: its request key `P req:<id>`, its sticky
--            session's key `P sess:<id>` and its site's `P site:<site>`, each
--            only when it has one (the block names their indexes)
-- ARGV[1]  pool prefix P = `<ns>:{<pool>}:` (KEYS must be built from it)
-- ARGV[2]  `<limit> <grace> <n>`: most due leases to reclaim in this call
--          (1..MAX_RECLAIM), the record grace ms (0..MAX_GRACE_MS) and n, the
--          number of requests (1..MAX_REQUESTS): one argument, read once and
--          kept (see STRAIGHT.head in _lib_acquire.lua); then n blocks as read by
--          read_request() in _lib_acquire.lua: the full block ('\2', then the
--          consumer, duration, record TTL,
--          selector, filter, exact flag, random, request key index, session
--          key index and ms, site key index, ticket key index, number and
--          ms, tags), the
--          spec block ('\1', consumer, those fields after the consumer joined by
--          newlines: a request with no request id, not random) or the short
--          block (the consumer alone) of a request that repeats the one before
--          it but for its consumer
--
-- Reply: one entry per request, in order (an array of them; with one request,
-- the entry alone), each entry one string:
--   'OK <token> <acquired ms> <expires ms> <proxy seq> <pool id> <proxy json>':
--                            the lease id is made of the token and the pool id
--   'EXISTING <token>'       its request id already got this lease (nothing written)
--   'NONE'                   no available proxy matches
--   'QUEUED'                 its ticket is not the head of the queue (nothing taken)
--   'RETRY'                  none, but due leases remain: run cleanup.lua, call again
--   'NO_ORDER <order>'       the selector needs an order the pool does not keep
--   'POOL_NOT_FOUND' / 'SCHEMA <found>'   for every request
-- Errors (nothing written): bad arguments, in any request.
--
-- One least_used request (one declared tag or none, no request id, nothing due
-- to reclaim) takes the straight way (serve_one in _lib_acquire.lua): HMGET
-- meta, TIME, ZRANGE of its index (HGET proxies only for a JSON the library does
-- not remember), SET record, ZADD per load index key of the proxy (or ZREM per
-- index key and HSET held, when it is now full), ZADD live: 7 with one declared
-- attribute.
--
-- A batch of least_used requests for one index, or for several of one
-- attribute (several countries), no request id, nothing due, takes the
-- straight way too (STRAIGHT.cycle in _lib_acquire.lua, with no releases):
-- HMGET meta, TIME, one ZRANGE of each index's first entries, as many as its
-- requests (HGET proxies for a JSON the library does not remember), one MSET
-- of the records (a live lease's record has no TTL: it gets the grace when the
-- lease leaves the live set), one ZADD per load key (ZREM per index key and
-- HSET held for proxies now full), ZADD live, HSET meta when a hint moved: 7
-- with one declared attribute and one index, whatever n.
--
-- Calls, n requests on the fast path (least_used, one declared tag or none):
-- HMGET meta, TIME, one ZRANGE per index used per page of candidates read (a
-- page holds what the call's requests need; HMGET proxies only for proxies whose
-- JSON the library does not remember under the meta's `pver`), the records (one
-- SET, or one MSET of them all; a request id's SET at once, plus GET and SET of
-- its request key), one ZADD per index key
-- whose members moved, one ZADD live, and HSET meta only when a hint moved (or
-- HSET fence when a token passes the reservation, about once a second): 7 with
-- one request and one declared tag (the first call after the library loads also
-- reads the pool's fixed settings: one more HMGET meta). Reclaim adds
-- ZRANGEBYSCORE, ZMSCORE load:all (HMGET proxies, ZMSCORE and HMGET held only
-- for due leases' proxies not in the indexes), ZREM, PEXPIRE per record, ZRANGE
-- and the index writes it made, only when the `exp` hint is due. A round_robin request reads the cursor (HGET meta
-- rr) once per call. Cost O(n log N), flat in pool size N.
--
-- A fair waiter's request (one with a ticket) takes the general path, and
-- adds ZRANGEBYSCORE and ZADD of P tickets:until and ZRANGE of P tickets (its
-- turn, see _lib_fair.lua), and when granted ZREM of each (and PUBLISH on
-- P freed when another ticket waits): 3 when it is not its turn, 5 or 6 more
-- when it is.

local limit, grace, n = STRAIGHT.open_call()
if not limit then return grace end
local at = 3
for i = 1, n do
  local r, nxt = read_request(at, i)
  if not r then return fail(nxt) end
  at = nxt
end
if at ~= #ARGV + 1 then return fail('bad argument count') end

if n == 1 then
  local r = REQS[1]
  if r.fast and r.order == 'load' and r.reqk == 0 then
    local t = serve_one(r)
    if t then return t end
  end
end
if n > 1 and STRAIGHT.cycle(0, n, CREATED or '0', grace) then return OUT end
reclaim_due(limit, grace)
for i = 1, n do OUT[i] = serve(REQS[i], n - i, i) end
OUT[n + 1] = nil
finish()
if n == 1 then return OUT[1] end
return OUT
