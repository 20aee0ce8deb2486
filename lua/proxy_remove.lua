-- proxy_remove.lua: remove a proxy from its pool and from every index. Its live
-- leases end with it: they leave the live set now, and their records go (a
-- lease of a removed proxy is not found: release says not_found).
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P    ARGV[2]  proxy id
--
-- Reply: 1 when it existed and is removed, else 0.
-- Errors (nothing written): bad arguments.
--
-- Calls: HMGET meta, HGET ids, HMGET proxies, ZMSCORE load, HMGET held, HSET meta
-- (the counters `proxies`, `active` and `banned`), one ZREM per index key, HDEL
-- proxies, ids and held, HINCRBY meta pver, ZREM cooldown (HDEL succ in a pool
-- that keeps the success order); with live leases,
-- ZSCAN of the live set for its members (O(L), stopping once all are found),
-- one ZREM and one UNLINK of their records.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local id = ARGV[2]
if not is_uuid(id) then return fail('bad proxy id') end
local m = read_meta(KEYS[1], 'proxies', 'active', 'attrs', 'orders', 'banned')
if not m then return 0 end
read_settings(m[2], m[6], m[7])
local mem = seq_of(id)
if not mem then return 0 end
load_states({ mem })
local st = T[mem]
local live_n = st.n
if st.info then
  local was_active = st.info.p.status == nil
  local was_banned = st.info.p.status == 'banned'
  local old = st.info
  st.info = nil
  plan(st, old) -- out of every index, and out of held
  redis.call('HSET', KEYS[1], 'proxies', fmt_int(math.max(0, (tonumber(m[4] or '0') or 0) - 1)),
    'active', fmt_int(math.max(0, (tonumber(m[5] or '0') or 0) - (was_active and 1 or 0))),
    'banned', fmt_int(math.max(0, (tonumber(m[8] or '0') or 0) - (was_banned and 1 or 0))))
end
flush()
redis.call('HDEL', P .. K_PROXIES, mem)
proxies_changed()
redis.call('HDEL', P .. K_HELD, mem)
redis.call('HDEL', ids_key(id), id)
redis.call('ZREM', P .. K_COOLDOWN, mem)
if HAS_ORDER.succ then redis.call('HDEL', P .. K_SUCC, mem) end
if live_n > 0 then
  local live, cursor, gone = P .. K_LIVE, '0', {}
  repeat
    local r = redis.call('ZSCAN', live, cursor, 'MATCH', mem .. ':*', 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2], 2 do gone[#gone + 1] = r[2][i] end
  until cursor == '0' or #gone >= live_n
  if #gone > 0 then
    live_gone(redis.call('ZREM', live, unpack(gone)))
    -- Their records go too (a live lease's record has no TTL of its own): a
    -- lease of a removed proxy is not found, whether or not its record is.
    local recs = {}
    for i, member in ipairs(gone) do recs[i] = P .. string.match(member, ':(%d+)$') end
    redis.call('UNLINK', unpack(recs))
  end
end
return 1
