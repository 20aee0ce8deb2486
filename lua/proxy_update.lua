-- proxy_update.lua: replace a proxy's fields (not its pool, seq, lease count,
-- failure count, cooldown or latency, which carry over) and move it between
-- indexes.
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P    ARGV[2]  pool id: must be the pool's id
-- ARGV[3]  the proxy's new JSON (as for proxy_add.lua; its id names the proxy)
--
-- Reply: {'OK', json, live leases, seq} | {'NOT_FOUND'} | {'POOL_MISMATCH'}
--        | {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: HMGET meta, HGET ids, HMGET proxies, ZMSCORE load, HMGET held, then one
-- command per index key of the old and new values, HSET proxies, SADD tags, HSET
-- meta (the counters `active` and `banned`, which follow a new status). Cost
-- O(t log N), t = index keys.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
if not is_uuid(ARGV[2]) then return fail('bad pool id') end
if #ARGV ~= 3 then return fail('bad argument count') end
local p, err = check_proxy_json(ARGV[3], false)
if not p then return fail(err) end

local m, why, found = read_meta(KEYS[1], 'active', 'attrs', 'orders', 'wait_until', 'banned')
if not m then
  if why == 'SCHEMA' then return { why, found } end
  return { 'NOT_FOUND' }
end
read_settings(m[2], m[5], m[6])
local mem = seq_of(p.id)
if not mem then return { 'NOT_FOUND' } end
if m[2] ~= ARGV[2] then return { 'POOL_MISMATCH' } end
load_states({ mem })
local old = T[mem].info
if not old then return { 'NOT_FOUND' } end
-- What the scripts keep carries over.
local json = ARGV[3]
for _, k in ipairs({ 'latency', 'fails', 'cool', 'rest', 'failure' }) do
  if old.p[k] ~= nil then json = json_set(json, p, k, old.p[k]) end
end
local counters = read_counters(m[4], m[8])
local st = rewrite(mem, json, counters)
flush()
remember_tags({ st.info })
redis.call('HSET', KEYS[1], counter_fields(counters))
if st.info.ok then notify(m[7], clock()) end
return proxy_reply(st)
