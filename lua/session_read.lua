-- session_read.lua: the proxy a sticky session keeps, and until when; read-only.
--
-- KEYS[1]  P meta     KEYS[2]  P sess:<percent-encoded session id>
-- ARGV[1]  pool prefix P
--
-- Reply: {'OK', proxy JSON, until ms}: the session keeps that proxy until then
--     or {'NONE'}: it keeps none (never bound, ended, bound in an earlier pool
--        of this name, or its proxy was removed)
--     or {'NOT_FOUND'} (no such pool, or being removed) or {'SCHEMA', found}
--
-- Calls: HMGET meta, GET, HGET proxies, TIME, PTTL. Cost O(1).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
local sess = prefix .. K_SESS
if string.sub(KEYS[2], 1, #sess) ~= sess then return fail('bad session key') end
local m = redis.call('HMGET', KEYS[1], 'schema', 'id', 'removing')
if not m[2] or m[3] then return { 'NOT_FOUND' } end
if m[1] ~= SCHEMA then return { 'SCHEMA', m[1] or '' } end
local v = redis.call('GET', KEYS[2])
if not v then return { 'NONE' } end
local seq, id = string.match(v, '^(%d+) (.+)$')
if not seq or id ~= m[2] then return { 'NONE' } end
local json = redis.call('HGET', prefix .. K_PROXIES, seq)
if not json then return { 'NONE' } end
local now = clock()
local left = redis.call('PTTL', KEYS[2])
if left < 0 then return { 'NONE' } end
return { 'OK', json, now + left }
