-- rotate.lua: for each of n requests on one pool, release a lease and acquire
-- the next proxy, in one atomic step and one round trip (the crawler loop that
-- does exactly that). Requests are served in arrival order, each as if alone:
-- release i, then acquire i (which may get the proxy it just gave back).
--
-- KEYS[1]    P meta        KEYS[2]  P live
-- KEYS[3]    P tickets   KEYS[4]  P tickets:until   only when a request holds a
--            fair waiter's ticket (as acquire.lua)
-- KEYS[3..]  (or KEYS[5..] after those) per request, in order: its request key `P req:<id>`, its sticky
--            session's key `P sess:<id>` and its site's `P site:<site>`, each
--            only when it has one (the block names their indexes)
-- ARGV[1..2] as acquire.lua (prefix; reclaim limit, grace ms and n), then n blocks:
--   +0 the token of the lease to release (a lease of this pool), then an acquire
--   block as acquire.lua reads it
--
-- Reply: one entry per request, in order (an array of them; with one request,
-- the entry alone), each entry one string: '<release outcome> <acquire entry>',
-- the outcome one of released | already_released | expired | not_found and the
-- acquire entry as acquire.lua's ('OK ...', 'NONE', ...); or the acquire entry
-- alone when nothing was released: 'NO_ORDER <order>' for that request, or
-- 'POOL_NOT_FOUND' / 'SCHEMA <found>' for every request (nothing written).
-- Errors (nothing written): bad arguments, in any request.
--
-- Calls, one request on the fast path: TIME, HMGET meta, GET record, ZREM live,
-- SET released record, ZADD XX INCR of the released proxy's `load:all` (and a
-- ZADD per other load key of it), ZRANGE, SET new record, ZADD per load key of
-- the new proxy, ZADD live: 12 with one declared attribute, against 14
-- for a release and an acquire apart; 9 when the proxy released is the one
-- least_used picks again (STRAIGHT.rotate_same: no index written); 13 when
-- rotate_same() finds another one is (its ZSCORE more: the record and the
-- index's first entry it read are not read again) (HMGET proxies
-- only for proxies whose JSON the library does not remember; HSET meta only when
-- a hint or the token reservation moved).
--
-- Calls, n requests on the fast path (live leases of indexed proxies,
-- least_used for one index or for indexes of one attribute with distinct
-- values, nothing due: STRAIGHT.cycle, each release applied just before its
-- acquire): HMGET meta, TIME, MGET records, ZMSCORE live, ZMSCORE load:all,
-- ZRANGE of each index's first entries (as many as its requests), ZREM live, SET per
-- released record, one ZADD per load key whose entries moved, ZADD live, MSET
-- of the new records: 10 + n with one declared attribute when every proxy
-- taken was one given back.

local limit, grace, n = STRAIGHT.open_call()
if not limit then return grace end
local prefix = P
-- The crawler loop's call, one lease in hand and one least_used request with
-- nothing due to reclaim: released and served straight (release_one, then
-- serve_one or, when that leaves it, serve), without the tables of a batch.
if n == 1 then
  local id = ARGV[3]
  if not is_token(id) then return fail('bad lease token') end
  local r, nxt = read_request(4, 1)
  if not r then return fail(nxt) end
  if nxt ~= #ARGV + 1 then return fail('bad argument count') end
  if r.fast and r.order == 'load' and r.reqk == 0 and not r.noorder
    and not (EXP and EXP <= NOW) and not (COOL_NEXT and COOL_NEXT <= NOW) then
    local same, record, first = STRAIGHT.rotate_same(id, prefix .. id, r, CREATED or '0', grace)
    if same then
      finish()
      return same
    end
    -- What rotate_same() read is not read again.
    local outcome, freed = release_one(id, prefix .. id, CREATED or '0', NOW, NOW_S, grace,
      record)
    if freed then FREED = FREED + 1 end
    local reply = outcome .. ' ' .. (serve_one(r, first) or serve(r, 0, 1))
    finish()
    return reply
  end
end
-- The tokens go where the straight way reads them (STRAIGHT.toks, as
-- key_tokens() leaves them for release.lua and cycle.lua).
local ids, keys, at = STRAIGHT.toks, {}, 3
for i = 1, n do
  local id = ARGV[at]
  if not is_token(id) then return fail('bad lease token') end
  ids[i], keys[i] = id, prefix .. id
  local r, nxt = read_request(at + 1, i)
  if not r then return fail(nxt) end
  at = nxt
end
if at ~= #ARGV + 1 then return fail('bad argument count') end

-- The fleet's batch: live leases of indexed proxies given back, least_used
-- requests for one index or for indexes of one attribute (several
-- countries), nothing due (STRAIGHT.cycle, each release just before its
-- acquire).
if n > 1 then
  if STRAIGHT.cycle(n, n, CREATED or '0', grace, keys) then
    for i = 1, n do
      OUT[i], OUT[n + i] = 'released ' .. OUT[n + i], nil
    end
    return OUT
  end
end

-- A request whose selector needs an order the pool does not keep is refused
-- before its lease is touched: nothing of it is released.
local rel_ids, rel_keys, slot = {}, {}, {}
for i = 1, n do
  if not REQS[i].noorder then
    rel_ids[#rel_ids + 1], rel_keys[#rel_keys + 1] = ids[i], keys[i]
    slot[i] = #rel_ids
  end
end
reclaim_due(limit, grace)
if rel_ids[1] then prepare_releases(rel_ids, rel_keys, CREATED or '0') end
for i = 1, n do
  local reply
  if slot[i] then
    local outcome, freed = apply_release(slot[i], NOW, NOW_S, grace)
    if freed then FREED = FREED + 1 end
    reply = outcome .. ' ' .. serve(REQS[i], n - i, i)
  else
    reply = serve(REQS[i], n - i, i)
  end
  OUT[i] = reply
end
OUT[n + 1] = nil
finish()
if n == 1 then return OUT[1] end
return OUT
