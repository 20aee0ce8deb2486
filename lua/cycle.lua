-- cycle.lua: releases and acquires of one pool in one atomic step: first the
-- releases, in order, then the acquires, in order, each as if alone (an
-- acquire sees the slots the releases of the call freed). The storage sends
-- one when releases and acquires of a pool wait at the same time: a fleet's
-- workers give a proxy back and ask for the next one all the time, and one
-- call for both pays the call, the clock and the pool's meta once, and a
-- proxy given back and taken again in it keeps its index entries.
--
-- KEYS[1]    P meta        KEYS[2]  P live
-- KEYS[2+i]  P <token>     the record of release i (r = #KEYS - 2, 1..MAX_REQUESTS):
--                          the token is read from its key, as release.lua does
-- ARGV[1]    pool prefix P
-- ARGV[2]    `<limit> <grace> <a>` as acquire.lua's, a the number of acquires
--            (1..MAX_REQUESTS)
-- ARGV[3..]  a acquire blocks as acquire.lua reads them, none with a key of
--            its own (no request id, session, site or ticket)
--
-- Reply: one array, r release outcomes (as release.lua's: released |
-- already_released | expired | not_found), then a acquire entries (as
-- acquire.lua's); or {'POOL_NOT_FOUND'} / {'SCHEMA <found>'} for the whole
-- call (nothing written).
-- Errors (nothing written): bad arguments.
--
-- Calls, the usual call (releases of live leases of indexed proxies, then
-- least_used acquires for one index, or for indexes of one attribute with
-- distinct values such as several countries, nothing due: STRAIGHT.cycle in
-- _lib_acquire.lua): HMGET meta, TIME, MGET records, ZMSCORE live, ZMSCORE
-- load:all, ZRANGE of each index's first entries, as many as its requests
-- (HGET proxies only for a JSON the library does not remember), ZREM live,
-- SET per released record,
-- one ZADD per load key whose entries moved (none for a proxy released and
-- taken again: its count ends where it was), ZADD live, MSET of the new
-- records: 10 + r with one declared attribute when every proxy taken was one
-- given back. Anything else goes the general way (as rotate.lua's: the
-- releases prepared and applied, then each acquire served), nothing written
-- before.

local limit, grace, a = STRAIGHT.open_call()
if not limit then
  if type(grace) == 'table' and not grace.err then return { grace[1] } end
  if type(grace) == 'string' then return { grace } end
  return grace
end
local prefix = P
local r = #KEYS - 2
if r < 1 or r > MAX_REQUESTS then return fail('bad key count') end
local toks = STRAIGHT.key_tokens(prefix, r)
if not toks then return fail('bad lease token') end
local at = 3
for i = 1, a do
  local q, nxt = read_request(at, i)
  if not q then return fail(nxt) end
  if q.reqk ~= 0 or q.sessk ~= 0 or q.sitek ~= 0 or q.tickk ~= 0 then
    return fail('a cycle takes no request with keys of its own')
  end
  at = nxt
end
if at ~= #ARGV + 1 then return fail('bad argument count') end
local created = CREATED or '0'
if STRAIGHT.cycle(r, a, created, grace) then return OUT end

-- The general way.
local ids, keys = STRAIGHT.release_keys(r)
if not ids then return fail('bad lease token') end
reclaim_due(limit, grace)
prepare_releases(ids, keys, created)
for i = 1, r do
  local o, f = apply_release(i, NOW, NOW_S, grace)
  OUT[i] = o
  if f then FREED = FREED + 1 end
end
for i = 1, a do OUT[r + i] = serve(REQS[i], a - i, i) end
OUT[r + a + 1] = nil
finish()
return OUT
