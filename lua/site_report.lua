-- site_report.lua: record a failure or a success of a proxy with one site. A
-- failure counts one more in a row and rests the proxy for that site, or bans
-- it for the site at the ban threshold; a success forgets its count, rest and
-- ban. Nothing else about the proxy changes (its status, its indexes).
--
-- KEYS[1]  P meta      KEYS[2]  P site:<percent-encoded site>
-- ARGV[1]  pool prefix P    ARGV[2]  proxy id    ARGV[3]  'success' or 'failure'
-- ARGV[4]  base cooldown ms (1..MAX_LEASE_MS)   ARGV[5]  cap ms (base..MAX_LEASE_MS)
-- ARGV[6]  millionths of the cooldown kept after jitter (0..1000000)
-- ARGV[7]  failures in a row that ban (0 = never)
-- ARGV[8]  failure reason (0..256 bytes, no control characters)
-- ARGV[9]  ms the site's state is kept after this report (SITE_MEMORY)
--
-- The site's hash: `pool` -> the pool's id (a hash of an earlier pool of this
-- name is dropped first), seq -> `<failures> <until-ms | ban> <reason>`: the
-- n-th failure in a row rests the proxy for STRAIGHT.cooldown_ms(n, base, cap,
-- keep) ms (_lib.lua), as report.lua's cooldowns. The hash expires ARGV[9] ms
-- after the last report.
--
-- Reply: {'OK', failures, until ms (0: not resting), banned (0|1), reason}
--     or {'NOT_FOUND'} (no such proxy in this pool) | {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: HMGET meta, HGET ids, HEXISTS proxies, TIME, HMGET site, HSET or HDEL
-- site (DEL first for a hash of an earlier pool), PEXPIRE, and PUBLISH when a
-- success may serve a waiter. Cost O(1).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
if not STRAIGHT.site_key_ok(prefix, KEYS[2]) then return fail('bad site key') end
local a, bad = STRAIGHT.report_args()
if not a then return fail(bad) end
local id, mode, base, cap, keep, ban_after, reason = a.id, a.mode, a.base, a.cap, a.keep,
  a.ban_after, a.reason
local memory = int_in(ARGV[9], 1, MAX_LEASE_MS)
if not memory then return fail('bad numeric argument') end

local m, why, found = read_meta(KEYS[1], 'wait_until')
if not m then
  if why == 'SCHEMA' then return { why, found } end
  return { 'NOT_FOUND' }
end
local pool_id = m[2]
local mem = seq_of(id)
if not mem or redis.call('HEXISTS', prefix .. K_PROXIES, mem) == 0 then return { 'NOT_FOUND' } end
local now = clock()
local key = KEYS[2]
local got = redis.call('HMGET', key, 'pool', mem)
if got[1] ~= pool_id then
  if got[1] then redis.call('DEL', key) end
  got[2] = false
end
if mode == 'success' then
  if got[2] then
    redis.call('HDEL', key, mem)
    notify(m[4], now)
  end
  if redis.call('HLEN', key) > 1 then redis.call('PEXPIRE', key, memory) end
  return { 'OK', 0, 0, 0, '' }
end
local fails = (got[2] and tonumber(string.match(got[2], '^(%d+) ')) or 0) + 1
local until_ms, banned, state = 0, 0, nil
if ban_after > 0 and fails >= ban_after then
  banned, state = 1, 'ban'
else
  until_ms = now + STRAIGHT.cooldown_ms(fails, base, cap, keep)
  state = fmt_int(until_ms)
end
redis.call('HSET', key, 'pool', pool_id, mem, fmt_int(fails) .. ' ' .. state .. ' ' .. reason)
redis.call('PEXPIRE', key, memory)
return { 'OK', fails, until_ms, banned, reason }
