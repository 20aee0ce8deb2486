-- audit.lua: compare a batch of a pool's proxies' `current_leases` with their live
-- leases (the `holders` index), and their membership of the availability indexes
-- and the `active` / `leased` sets with their fields; repair any drift (a counter
-- edited by hand, a bug) by setting the counter to the live leases and rebuilding
-- the proxy's memberships from scratch.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxies    every proxy, by insertion sequence
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  audit the proxies whose sequence is > this (-1 to start)
-- ARGV[3]  batch size (1..10000)
--
-- Reply: {next, fixes...}: `next` is the last sequence audited (pass it back as
-- ARGV[2]) or -1 when the pool is done (or gone); each fix is a flat triple
-- `proxy_id, recorded, actual` for a proxy that was repaired (recorded = actual
-- when only its memberships were wrong).
-- Errors (nothing written): bad arguments.
--
-- Cost: O(b log n) for a batch of b proxies (a ZCOUNT and three membership reads
-- each, plus O(t log n) per repair):
-- callers loop, so Redis is never blocked for long.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'proxies' then
  return fail('keys do not match the pool prefix')
end
local after = int_in(ARGV[2], -1, 9007199254740991)
local limit = int_in(ARGV[3], 1, 10000)
if not after or not limit then return fail('bad numeric argument') end
local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return { -1 } end

local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. fmt_int(after), '+inf',
  'WITHSCORES', 'LIMIT', 0, limit)
local out = { -1 }
local last = after
for i = 1, #ids, 2 do
  local id, seq = ids[i], tonumber(ids[i + 1])
  last = seq
  local s = snapshot(prefix, id)
  if s then
    local actual = redis.call('ZCOUNT', prefix .. 'holders', seq, seq)
    local truth = with_leases(s, actual)
    -- Membership the stats and selection rely on, checked cheaply.
    local indexed = redis.call('ZSCORE', prefix .. 'avail:seq:all', id) ~= false
    local in_active = redis.call('SISMEMBER', prefix .. 'active', id) == 1
    local in_leased = redis.call('SISMEMBER', prefix .. 'leased', id) == 1
    if actual ~= s.leases or indexed ~= truth.available or in_active ~= truth.active
      or in_leased ~= (actual > 0) then
      if actual ~= s.leases then
        redis.call('HSET', prefix .. 'proxy:' .. id, 'current_leases', actual)
      end
      -- Rebuild from scratch: take it out of everything, put it back per the truth.
      index_remove(prefix, id, s)
      redis.call('SREM', prefix .. 'active', id)
      redis.call('SREM', prefix .. 'leased', id)
      account(prefix, id, nil, truth)
      out[#out + 1] = id
      out[#out + 1] = s.leases
      out[#out + 1] = actual
    end
  end
end
if #ids / 2 >= limit then out[1] = last end
return out
