-- pool_create.lua: create a pool's meta hash with zeroed counters.
--
-- KEYS[1]  <ns>:{<pool>}:meta
-- ARGV[1]  pool prefix `<ns>:{<pool>}:`
-- ARGV[2]  pool id (uuid)
-- ARGV[3]  pool name ([A-Za-z0-9._-]{1,64}, the one in the prefix)
-- ARGV[4]  '1' with a description in ARGV[5], '0' without
--
-- Reply: 1 when created, 0 when a pool with this name exists (or is being removed).
-- Errors (nothing written): bad arguments.
--
-- Cost: O(1).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') then
  return fail('keys do not match the pool prefix')
end
local name = ARGV[3]
if not is_uuid(ARGV[2]) or type(name) ~= 'string' or not string.match(name, '^[A-Za-z0-9._-]+$')
  or #name > 64 or string.sub(prefix, -(#name + 3)) ~= '{' .. name .. '}:' then
  return fail('bad pool id or name')
end
if ARGV[4] ~= '0' and ARGV[4] ~= '1' then return fail('bad description flag') end
if ARGV[4] == '1' and (type(ARGV[5]) ~= 'string' or #ARGV[5] > 1024) then
  return fail('bad description')
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'name', name, 'next_seq', 0)
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'description', ARGV[5]) end
return 1
