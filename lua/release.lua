-- release.lua: give leases of one pool back, each at most once. The storage
-- sends concurrent releases of a pool as one call.
--
-- KEYS[1]    P meta        KEYS[2]  P live
-- KEYS[2+i]  P <token>     the record of lease i (n = #KEYS - 2, 1..MAX_REQUESTS):
--                          the token is read from its key (an argument more
--                          would cost Redis more than reading it)
-- ARGV[1]    pool prefix P
-- ARGV[2]    record grace ms (0..MAX_GRACE_MS): a released record is kept this long
--
-- Reply: {'OK', outcome...}, one outcome per lease in order; or one outcome as
-- a string, the outcome of every lease (Redis replies a string for about a
-- third of what an element of a table costs):
--   released          it was live; its slot is free again
--   already_released  released before; nothing changed
--   expired           it had expired; its slot was (or is now) given back once
--   not_found         no record, a lease of an earlier pool of this name (a token
--                     older than the pool), or its proxy was removed
-- or {'POOL_NOT_FOUND'} / {'SCHEMA', found} (nothing written).
-- Publishes on P freed when it freed a slot and a waiter announced itself.
-- Errors (nothing written): bad arguments.
--
-- One lease takes the straight way (release_one in _lib.lua), with the same
-- calls as below and none of the batch's bookkeeping.
--
-- Calls, one lease: HMGET meta, TIME, GET record, ZREM live, SET record, ZADD
-- XX INCR of `load:all` (the count down by one, answering the new score), ZADD
-- of that score per other load key of the proxy: 7 with one declared attribute
-- (HGET proxies too when the library does not remember the proxy's JSON under
-- the meta's `pver`; the first call after the library loads also reads the
-- pool's fixed settings; a proxy not indexed: HGET held, then HSET or HDEL held
-- and the index writes of the batch path). n leases: MGET,
-- ZMSCORE live, ZREM live once each, SET per lease, one command per index key.
-- n live leases of indexed proxies take the straight way (STRAIGHT.release in
-- _lib.lua): HMGET meta, TIME, MGET records, ZMSCORE live, ZMSCORE load:all,
-- ZREM live, SET per record, one ZADD per load key: 7 + n with one declared
-- attribute; anything else (a token twice, a record not active or expired, a
-- proxy full or unknown) goes the way above, nothing written before.

local prefix = ARGV[1]
local n = #KEYS - 2
if not check_meta_live(prefix)
  or n < 1 or n > MAX_REQUESTS or #ARGV ~= 2 then
  return fail('keys do not match the pool prefix')
end
local grace = STRAIGHT.grace(ARGV[2])
if not grace then return fail('bad grace') end
-- Each record key in this pool, its token what follows the prefix. The
-- tokens' digits are checked where a lease does not go the straight way
-- (STRAIGHT.release finds no active record, hence no live member, for any
-- other key: nothing written first).
local toks = STRAIGHT.key_tokens(prefix, n)
if not toks then return fail('bad lease token') end

local m, why, found = open_pool('wait_until')
if not m then return { why, found } end
local now, _, now_s = clock()
if n == 1 then
  if not is_token(toks[1]) then return fail('bad lease token') end
  local o, f = release_one(toks[1], KEYS[3], POOL.created or '0', now, now_s, grace)
  if f then notify(m[4], now) end
  return o
end
local created = POOL.created or '0'
local out = STRAIGHT.release(n, created, now_s, grace)
if out then
  notify(m[4], now)
  return out
end
local ids, keys = STRAIGHT.release_keys(n)
if not ids then return fail('bad lease token') end
prepare_releases(ids, keys, created)
local out, freed = { 'OK' }, 0
for i = 1, n do
  local o, f = apply_release(i, now, now_s, grace)
  out[i + 1] = o
  if f then freed = freed + 1 end
end
flush()
if freed > 0 then notify(m[4], now) end
return out
