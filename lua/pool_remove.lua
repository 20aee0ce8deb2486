-- pool_remove.lua: remove a pool with its proxies, leases and indexes, in
-- bounded batches. The first call marks the pool as being removed (every other
-- script then treats it as gone); each call deletes up to ARGV[3] live leases
-- (their records) or index tags; the last one unlinks the rest (UNLINK: Redis
-- frees big keys in the background).
--
-- Also removes a pool written by the first key layout (no `schema` field), so
-- that such a pool can be recreated or re-imported: then it returns the ids of
-- the proxies it removed, for the caller to drop from that layout's registry.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P    ARGV[2]  'start' or 'continue'    ARGV[3]  batch (1..MAX_RECLAIM)
--
-- Reply: {state, pool id, removed proxy ids (first layout only)...}; state is
-- 'NOT_FOUND' (first call, no such pool; pool id ''), 'MORE' (call again with
-- 'continue') or 'DONE'.
-- Errors (nothing written): bad arguments.
--
-- Calls: per batch b, ZRANGE live, UNLINK of b records, ZREM live; then one
-- UNLINK per tag, one UNLINK of the rest. Finished records, request keys,
-- sticky sessions' keys and sites' hashes are left to their TTL (a site's hash
-- up to 7 days): a pool created again under this name starts its tokens after
-- them (`created`), and a session or site hash holds the id of its pool, so it
-- never takes them for its own.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local phase = ARGV[2]
if phase ~= 'start' and phase ~= 'continue' then return fail('bad phase') end
local limit = int_in(ARGV[3], 1, MAX_RECLAIM)
if not limit then return fail('bad batch size') end

local m = redis.call('HMGET', KEYS[1], 'schema', 'id', 'removing')
if not m[2] then
  if phase == 'start' then return { 'NOT_FOUND', '' } end
  return { 'DONE', '' }
end
redis.call('HSET', KEYS[1], 'removing', '1')
local pool_id = m[2]
local out = { 'MORE', pool_id }
local budget = limit

if m[1] == SCHEMA then
  local live = P .. K_LIVE
  local members = redis.call('ZRANGE', live, 0, budget - 1)
  if #members > 0 then
    local recs = {}
    for _, member in ipairs(members) do
      local tok = string.match(member, ':(%d+)$')
      if tok then recs[#recs + 1] = P .. tok end
    end
    if #recs > 0 then redis.call('UNLINK', unpack(recs)) end
    redis.call('ZREM', live, unpack(members))
    budget = budget - #members
  end
  if budget > 0 then
    local tags = redis.call('SPOP', P .. K_TAGS, budget)
    for _, tag in ipairs(tags) do
      redis.call('UNLINK', P .. K_IDX .. 'load:' .. tag, P .. K_IDX .. 'seq:' .. tag,
        P .. K_IDX .. 'lat:' .. tag, P .. K_IDX .. 'succ:' .. tag)
    end
    budget = budget - #tags
  end
  if budget > 0 then
    local keys = { KEYS[1], live, P .. K_PROXIES, P .. K_HELD, P .. K_TAGS, P .. K_COOLDOWN,
      P .. K_GEO, P .. K_POLAR, P .. K_IDX .. 'load:all', P .. K_IDX .. 'seq:all',
      P .. K_IDX .. 'lat:all', P .. K_IDX .. 'succ:all', P .. K_SUCC, P .. STRAIGHT.K_TICKETS,
      P .. STRAIGHT.K_TICKET_ENDS }
    for i = 0, 255 do keys[#keys + 1] = P .. K_IDS .. string.format('%02x', i) end
    redis.call('UNLINK', unpack(keys))
    out[1] = 'DONE'
  end
  return out
end

-- The first layout: proxies in a zset and one hash each, leases `<id>:<seq>`.
local proxies = P .. 'proxies'
local ids = redis.call('ZRANGE', proxies, 0, budget - 1)
for _, id in ipairs(ids) do
  redis.call('UNLINK', P .. 'proxy:' .. id)
  redis.call('ZREM', proxies, id)
  out[#out + 1] = id
end
budget = budget - #ids
if budget > 0 then
  local live = redis.call('ZRANGE', P .. 'leases', 0, budget - 1)
  for _, member in ipairs(live) do
    local lease = string.match(member, '^([^:]+):')
    if lease then redis.call('UNLINK', P .. 'lease:' .. lease) end
    redis.call('ZREM', P .. 'leases', member)
  end
  budget = budget - #live
end
if budget > 0 then
  local tags = redis.call('SPOP', P .. 'tags', budget)
  for _, tag in ipairs(tags) do
    redis.call('UNLINK', P .. 'avail:seq:' .. tag, P .. 'avail:load:' .. tag, P .. 'avail:lat:' .. tag)
  end
  budget = budget - #tags
end
if budget > 0 then
  redis.call('UNLINK', KEYS[1], proxies, P .. 'leases', P .. 'tags', P .. 'holders', P .. 'active',
    P .. 'leased', P .. 'cooldown', P .. 'avail:seq:all', P .. 'avail:load:all',
    P .. 'avail:lat:all', P .. 'avail:geo', P .. 'avail:polar')
  out[1] = 'DONE'
end
return out
