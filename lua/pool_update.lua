-- pool_update.lua: set or clear a pool's description (a pool's indexes are fixed
-- when it is created).
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  pool id (uuid): must be the pool's id
-- ARGV[3]  '1' with a description in ARGV[4], '0' to clear it
--
-- Reply: {'OK'} | {'NOT_FOUND'} | {'ID_MISMATCH', pool's id} | {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: HMGET, HSET or HDEL. Cost O(1).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
if not is_uuid(ARGV[2]) then return fail('bad pool id') end
if ARGV[3] ~= '0' and ARGV[3] ~= '1' then return fail('bad description flag') end
if ARGV[3] == '1' and (type(ARGV[4]) ~= 'string' or #ARGV[4] > 1024) then
  return fail('bad description')
end
local m, why, found = read_meta(KEYS[1])
if not m then
  if why == 'SCHEMA' then return { why, found } end
  return { 'NOT_FOUND' }
end
if m[2] ~= ARGV[2] then return { 'ID_MISMATCH', m[2] } end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'description', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'description')
end
return { 'OK' }
