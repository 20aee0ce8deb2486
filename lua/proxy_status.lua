-- proxy_status.lua: set a proxy's status, or apply a health check (status,
-- checked_at, latency). Live leases stay; only active proxies with a free slot
-- are indexed.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P    ARGV[2]  proxy id
-- ARGV[3]  status: active | inactive | slow | banned
-- ARGV[4]  checked_at (RFC 3339) to record, or '' to keep it
-- ARGV[5]  latency ms measured (0..2^32-1), or '' to keep it
--
-- Reply: {'OK', json, live leases, seq} | {'NOT_FOUND'} | {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: HMGET meta, HGET ids, HMGET proxies, ZMSCORE load, HMGET held, one
-- command per index key when availability or latency changes, HSET proxies, HSET
-- meta (the counters `active` and `banned`). Cost O(t log N).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local id, status, checked, latency = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not is_uuid(id) then return fail('bad proxy id') end
if status ~= 'active' and status ~= 'inactive' and status ~= 'slow' and status ~= 'banned' then
  return fail('bad status')
end
if checked ~= '' and not is_text(checked, 64) then return fail('bad checked_at') end
if latency ~= '' and not int_in(latency, 0, MAX_U32) then return fail('bad latency') end

local m, why, found = read_meta(KEYS[1], 'active', 'attrs', 'orders', 'wait_until', 'banned')
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
local p = {}
for k, v in pairs(st.info.p) do p[k] = v end
local json = json_set(st.j, p, 'status', status ~= 'active' and status or nil)
if checked ~= '' then json = json_set(json, p, 'checked', checked) end
if latency ~= '' then json = json_set(json, p, 'latency', tonumber(latency)) end
local counters = read_counters(m[4], m[8])
st = rewrite(mem, json, counters)
flush()
redis.call('HSET', KEYS[1], counter_fields(counters))
if st.info.ok then notify(m[7], clock()) end
return proxy_reply(st)
