-- wait.lua: a waiting acquire announces itself until a time, so that releases,
-- cleanups and lifted cooldowns publish on P freed only while someone waits.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  how long the caller will wait, ms (1..MAX_LEASE_MS)
--
-- Reply: 1, or 0 when the pool does not exist.
-- Errors (nothing written): bad arguments.
--
-- Calls: TIME, HMGET, HSET when it extends the announced time. Cost O(1).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
local ms = int_in(ARGV[2], 1, MAX_LEASE_MS)
if not ms then return fail('bad wait') end
local m = read_meta(KEYS[1], 'wait_until')
if not m then return 0 end
local until_ms = clock() + ms
if (tonumber(m[4] or '') or 0) < until_ms then
  redis.call('HSET', KEYS[1], 'wait_until', fmt_int(until_ms))
end
return 1
