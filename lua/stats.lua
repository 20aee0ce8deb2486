-- stats.lua: one pool's stats, read atomically. Read-only (registered no-writes), so
-- Redis runs it even when it is out of memory, when the sweeper's gauges matter
-- most.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
--
-- Reply: {'OK', proxies, active, available, leased, live leases}
--     or {'NOT_FOUND'} (no such pool, or being removed) or {'SCHEMA', found}
-- available: members of idx:load:all; leased: its members scored 2^32 or more
-- (a lease or more) plus the fields of `held`; live leases: members of `live`.
--
-- Calls: HMGET, ZCARD, ZCOUNT, HLEN, ZCARD. Cost O(log N).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
local m = redis.call('HMGET', KEYS[1], 'schema', 'id', 'removing', 'proxies', 'active')
if not m[2] or m[3] then return { 'NOT_FOUND' } end
if m[1] ~= SCHEMA then return { 'SCHEMA', m[1] or '' } end
local load = prefix .. K_IDX .. 'load:all'
return { 'OK', tonumber(m[4] or '0') or 0, tonumber(m[5] or '0') or 0, redis.call('ZCARD', load),
  redis.call('ZCOUNT', load, LOAD_SHIFT, '+inf') + redis.call('HLEN', prefix .. K_HELD),
  redis.call('ZCARD', prefix .. K_LIVE) }
