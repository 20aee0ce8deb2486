-- stats.lua: one pool's stats, read atomically. Read-only (registered no-writes), so
-- Redis runs it even when it is out of memory, when the sweeper's gauges matter
-- most.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
--
-- Reply: {'OK', proxies, active, available, leased, live leases, cooling, banned}
--     or {'NOT_FOUND'} (no such pool, or being removed) or {'SCHEMA', found}
-- available: members of idx:load:all; leased: its members scored 2^32 or more
-- (a lease or more) plus the fields of `held`; live leases: members of `live`;
-- cooling: members of `cooldown` whose end is after Redis's now (the set is
-- cleaned lazily, so they are counted by score, never by ZCARD); proxies,
-- active and banned: the meta's counters.
--
-- Calls: HMGET, TIME, ZCARD, ZCOUNT, HLEN, ZCARD, ZCOUNT. Cost O(log N).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
local m = redis.call('HMGET', KEYS[1], 'schema', 'id', 'removing', 'proxies', 'active', 'banned')
if not m[2] or m[3] then return { 'NOT_FOUND' } end
if m[1] ~= SCHEMA then return { 'SCHEMA', m[1] or '' } end
local load = prefix .. K_IDX .. 'load:all'
local function counter(v) return math.max(0, tonumber(v or '0') or 0) end
local _, _, now_s = clock()
return { 'OK', counter(m[4]), counter(m[5]), redis.call('ZCARD', load),
  redis.call('ZCOUNT', load, LOAD_SHIFT, '+inf') + redis.call('HLEN', prefix .. K_HELD),
  redis.call('ZCARD', prefix .. K_LIVE),
  redis.call('ZCOUNT', prefix .. K_COOLDOWN, '(' .. now_s, '+inf'), counter(m[6]) }
