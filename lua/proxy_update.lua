-- proxy_update.lua: replace a proxy's fields (not its pool, sequence or lease
-- count) and move it between indexes.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- KEYS[2]  <ns>:{<pool>}:proxy:<id>
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  pool id (uuid): must be the proxy's pool_id
-- ARGV[3]  1, then one proxy as in proxy_add.lua (id, tags, f, pairs)
--
-- Reply: {'OK', field, value, ...} (HGETALL of the proxy after the change)
--        | {'NOT_FOUND'} | {'POOL_MISMATCH'}
-- Errors (nothing written): bad arguments.
--
-- Cost: O(t log n), t = index tags of the old and new values.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') then
  return fail('keys do not match the pool prefix')
end
if not is_uuid(ARGV[2]) or ARGV[3] ~= '1' then return fail('bad arguments') end
local proxies, next_at = read_proxies(1, 4)
if not proxies then return fail(next_at) end
if next_at ~= #ARGV + 1 then return fail('trailing arguments') end
local p = proxies[1]
if KEYS[2] ~= prefix .. 'proxy:' .. p.id then return fail('proxy key does not match') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing')
if not meta[1] or meta[2] then return { 'NOT_FOUND' } end
local old = snapshot(prefix, p.id)
if not old then return { 'NOT_FOUND' } end
if redis.call('HGET', KEYS[2], 'pool_id') ~= ARGV[2] then return { 'POOL_MISMATCH' } end

write_proxy_fields(KEYS[2], p.fields)
redis.call('HSET', KEYS[2], 'tags', p.tags)
for tag in string.gmatch(p.tags, '%S+') do
  redis.call('SADD', prefix .. 'tags', tag)
end
account(prefix, p.id, old, snapshot(prefix, p.id))
notify_freed(prefix)
local all = redis.call('HGETALL', KEYS[2])
table.insert(all, 1, 'OK')
return all
