-- pool_create.lua: create a pool's meta hash (schema 2) with zeroed counters
-- (proxies, active, banned) and the indexes it declares.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  pool id (uuid)
-- ARGV[3]  pool name ([A-Za-z0-9._-]{1,64}, the one in the prefix)
-- ARGV[4]  declared attributes, space-separated (country source city isp asn geo)
-- ARGV[5]  kept orders, space-separated: load, then seq, lat and succ when wanted
-- ARGV[6]  '1' with a description in ARGV[7], '0' without
-- ARGV[8]  rate limit per proxy: '<leases> <per ms>' (per / leases: 1 ms to
--          MAX_LEASE_MS), or '' for none; kept as the meta's `rate`
-- ARGV[9]  success scoring '<half-life ms> <exploration millionths>' (1..MAX_LEASE_MS,
--          0..1000000) when the orders have succ, else ''; kept as the meta's `succ`
--
-- Reply: 1 when created, 0 when a pool with this name exists (or is being removed).
-- Errors (nothing written): bad arguments.
--
-- Calls: EXISTS, TIME, HSET. Cost O(1).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
local name = ARGV[3]
if not is_uuid(ARGV[2]) or type(name) ~= 'string' or not string.match(name, '^[A-Za-z0-9._-]+$')
  or #name > 64 or string.sub(prefix, -(#name + 3)) ~= '{' .. name .. '}:' then
  return fail('bad pool id or name')
end
local ATTR_OK = { country = true, source = true, city = true, isp = true, asn = true, geo = true }
local seen = {}
for a in string.gmatch(ARGV[4], '%S+') do
  if not ATTR_OK[a] or seen[a] then return fail('bad attribute list') end
  seen[a] = true
end
local ORDER_OK = { seq = true, lat = true, succ = true }
if string.sub(ARGV[5], 1, 4) ~= 'load' then return fail('bad order list') end
for o in string.gmatch(string.sub(ARGV[5], 5), '%S+') do
  if not ORDER_OK[o] or seen[o] then return fail('bad order list') end
  seen[o] = true
end
if ARGV[6] ~= '0' and ARGV[6] ~= '1' then return fail('bad description flag') end
if ARGV[6] == '1' and (type(ARGV[7]) ~= 'string' or #ARGV[7] > 1024) then
  return fail('bad description')
end
local rate = ARGV[8]
if rate ~= '' then
  local l, per = string.match(rate or '', '^(%d+) (%d+)$')
  l, per = tonumber(l), tonumber(per)
  if not l or l < 1 or l > MAX_U32 or not per or math.ceil(per / l) < 1
    or math.ceil(per / l) > MAX_LEASE_MS then
    return fail('bad rate limit')
  end
end
local scoring = ARGV[9]
if (scoring ~= '') ~= (seen.succ == true) then return fail('bad success scoring') end
if scoring ~= '' then
  local h, e = string.match(scoring, '^(%d+) (%d+)$')
  h, e = tonumber(h), tonumber(e)
  if not h or h < 1 or h > MAX_LEASE_MS or not e or e > 1000000 then
    return fail('bad success scoring')
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- Tokens of this pool start after every token an earlier pool of this name
-- gave (they are at least Redis's time in µs); `created` tells them apart.
local _, now_us = clock()
-- `about` says what the hash is to whoever reads it, and (longer than 64 bytes)
-- keeps the hash a hash table: reading ten fields of a listpack costs Redis a
-- scan each.
redis.call('HSET', KEYS[1], 'schema', SCHEMA, 'id', ARGV[2], 'name', name, 'attrs', ARGV[4],
  'orders', ARGV[5], 'next_seq', '0', 'proxies', '0', 'active', '0', 'banned', '0',
  'created', fmt_int(now_us), 'fence', fmt_int(now_us), 'about',
  'lighthouse-lease pool, key layout ' .. SCHEMA .. ': see the README, Redis key schema')
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'description', ARGV[7]) end
if rate ~= '' then redis.call('HSET', KEYS[1], 'rate', rate) end
if scoring ~= '' then redis.call('HSET', KEYS[1], 'succ', scoring) end
return 1
