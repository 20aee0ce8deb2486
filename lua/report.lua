-- report.lua: record a success or a failure with a proxy. A success resets its
-- failure count and lifts a cooldown. A failure counts one more in a row and
-- either cools the proxy down (out of the indexes, into P cooldown until an
-- acquire or cleanup lifts it) or, at the ban threshold, bans it.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P    ARGV[2]  proxy id    ARGV[3]  'success' or 'failure'
-- ARGV[4]  base cooldown ms (1..MAX_LEASE_MS)   ARGV[5]  cap ms (base..MAX_LEASE_MS)
-- ARGV[6]  millionths of the cooldown kept after jitter (0..1000000)
-- ARGV[7]  failures in a row that ban the proxy (0 = never)
-- ARGV[8]  failure reason (0..256 bytes, no control characters)
--
-- The n-th failure in a row cools for STRAIGHT.cooldown_ms(n, base, cap, keep)
-- ms (_lib.lua): CooldownPolicy::delay_ms in src/cooldown.rs.
--
-- Reply: {'OK', json, live leases, seq} | {'NOT_FOUND'} | {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: TIME, HMGET meta, HGET ids, HMGET proxies, ZMSCORE load, HMGET held,
-- ZADD or ZREM cooldown, one command per index key when availability changes,
-- HSET proxies, HSET meta (the counters `active` and `banned`: a ban moves
-- both); in a pool that keeps the success order, HGET and HSET succ. Cost
-- O(t log N).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local a, bad = STRAIGHT.report_args()
if not a then return fail(bad) end
local id, mode, base, cap, keep, ban_after, reason = a.id, a.mode, a.base, a.cap, a.keep,
  a.ban_after, a.reason

local m, why, found = read_meta(KEYS[1], 'active', 'attrs', 'orders', 'wait_until', 'cool_next',
  'banned', 'succ')
if not m then
  if why == 'SCHEMA' then return { why, found } end
  return { 'NOT_FOUND' }
end
read_settings(m[2], m[5], m[6])
local mem = seq_of(id)
if not mem then return { 'NOT_FOUND' } end
load_states({ mem })
local st = T[mem]
if not st.info then return { 'NOT_FOUND' } end
local now = clock()
local p = {}
for k, v in pairs(st.info.p) do p[k] = v end
local json = st.j
local cooldown = P .. K_COOLDOWN
local freed = false
-- A rate-limit rest (`rest`) outlasts what a report does: the proxy's member of
-- P cooldown is scored by the later of the cooldown's and the rest's ends. When
-- a report ends the cooldown, a rest that is over ends with it; one that is not
-- keeps the member, scored by its end, and the `cool_next` hint (which may sit
-- at the old cooldown's end) comes down to it.
local rest = p.rest
local function end_cooldown()
  if rest and rest > now then
    redis.call('ZADD', cooldown, rest, mem)
    local hint = tonumber(m[8] or '')
    if hint == nil or rest < hint then redis.call('HSET', KEYS[1], 'cool_next', fmt_int(rest)) end
    return false
  end
  if rest then json = json_set(json, p, 'rest', nil) end
  redis.call('ZREM', cooldown, mem)
  return true
end
if mode == 'success' then
  json = json_set(json, p, 'fails', nil)
  if p.cool ~= nil then
    json = json_set(json, p, 'cool', nil)
    freed = end_cooldown()
  end
else
  local fails = (p.fails or 0) + 1
  json = json_set(json, p, 'fails', fails)
  json = json_set(json, p, 'failure', reason)
  if ban_after > 0 and fails >= ban_after then
    json = json_set(json, p, 'status', 'banned')
    json = json_set(json, p, 'cool', nil)
    end_cooldown()
  else
    local until_ms = now + STRAIGHT.cooldown_ms(fails, base, cap, keep)
    json = json_set(json, p, 'cool', until_ms)
    redis.call('ZADD', cooldown, math.max(until_ms, rest or 0), mem)
    -- Acquires lift cooldowns only once the pool's `cool_next` hint is due.
    local hint = tonumber(m[8] or '')
    if hint == nil or until_ms < hint then
      redis.call('HSET', KEYS[1], 'cool_next', fmt_int(until_ms))
    end
  end
end
-- A pool that keeps the success order counts the report into the proxy's
-- evidence first: rewrite() below writes the proxy's index entries again, its
-- success-order score read from there.
if HAS_ORDER.succ then STRAIGHT.score_report(mem, mode == 'success', now, m[10]) end
local counters = read_counters(m[4], m[9])
st = rewrite(mem, json, counters)
flush()
redis.call('HSET', KEYS[1], counter_fields(counters))
if freed and st.info.ok then notify(m[7], now) end
return proxy_reply(st)
