-- pool_remove.lua: remove a pool with its proxies, leases and indexes, in
-- bounded batches. The first call marks the pool as being removed (acquire,
-- release and the proxy scripts then treat it as gone); each call deletes up to
-- ARGV[3] proxies, live leases and index tags; the last one deletes the rest.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxies
-- KEYS[3]  <ns>:{<pool>}:leases
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  'start' for the first call, 'continue' for the next ones
-- ARGV[3]  batch size (1..100000)
--
-- Reply: {state, pool id, removed proxy ids...}; state is 'NOT_FOUND' (first
-- call, no such pool; pool id is ''), 'MORE' (call again with 'continue') or
-- 'DONE'. The proxy ids let the caller drop them from the proxy registry.
-- Errors (nothing written): bad arguments.
--
-- Cost: O(b log n) per call, b = batch size. Finished lease records that are no
-- longer live are left to their TTL; they name the old pool id, so a pool
-- created again under this name never mistakes them for its own.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'proxies'
  or KEYS[3] ~= prefix .. 'leases' then
  return fail('keys do not match the pool prefix')
end
local phase = ARGV[2]
if phase ~= 'start' and phase ~= 'continue' then return fail('bad phase') end
local limit = int_in(ARGV[3], 1, 100000)
if not limit then return fail('bad batch size') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] then
  if phase == 'start' then return { 'NOT_FOUND', '' } end
  return { 'DONE', '' }
end
if phase == 'start' and meta[2] then
  -- Someone else is removing it (or a remover died half-way): carry on.
  phase = 'continue'
end
redis.call('HSET', KEYS[1], 'removing', '1')

local out = { 'MORE', meta[1] }
local budget = limit
local ids = redis.call('ZRANGE', KEYS[2], 0, budget - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', prefix .. 'proxy:' .. id)
  redis.call('ZREM', KEYS[2], id)
  out[#out + 1] = id
end
budget = budget - #ids
if budget > 0 then
  local live = redis.call('ZRANGE', KEYS[3], 0, budget - 1)
  for _, member in ipairs(live) do
    local lease_id = string.match(member, '^([^:]+):')
    if lease_id then
      redis.call('DEL', prefix .. 'lease:' .. lease_id)
      redis.call('ZREM', prefix .. 'holders', lease_id)
    end
    redis.call('ZREM', KEYS[3], member)
  end
  budget = budget - #live
end
if budget > 0 then
  local tags = redis.call('SPOP', prefix .. 'tags', budget)
  for _, tag in ipairs(tags) do
    redis.call('UNLINK', prefix .. 'avail:seq:' .. tag, prefix .. 'avail:load:' .. tag,
      prefix .. 'avail:lat:' .. tag)
  end
  budget = budget - #tags
end
if budget > 0 then
  redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], prefix .. 'tags', prefix .. 'holders',
    prefix .. 'active', prefix .. 'leased', prefix .. 'cooldown',
    prefix .. 'avail:seq:all',
    prefix .. 'avail:load:all', prefix .. 'avail:lat:all', prefix .. 'avail:geo',
    prefix .. 'avail:polar')
  out[1] = 'DONE'
end
return out
