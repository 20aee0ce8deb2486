-- site_read.lua: the proxies of a pool with something counted against them for
-- one site (failures in a row, a rest, a ban); read-only.
--
-- KEYS[1]  P meta      KEYS[2]  P site:<percent-encoded site>
-- ARGV[1]  pool prefix P
--
-- Reply: {'OK', now ms, proxy JSON, state, ...}: each proxy that still exists,
-- with its state as site_report.lua writes it (`<failures> <until-ms | ban>
-- <reason>`); or {'NOT_FOUND'} (no such pool, or being removed) | {'SCHEMA', found}
--
-- Calls: HMGET meta, TIME, HGETALL site, HMGET proxies. Cost O(k) for k
-- proxies with a state for the site.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
if not STRAIGHT.site_key_ok(prefix, KEYS[2]) then return fail('bad site key') end
local m = redis.call('HMGET', KEYS[1], 'schema', 'id', 'removing')
if not m[2] or m[3] then return { 'NOT_FOUND' } end
if m[1] ~= SCHEMA then return { 'SCHEMA', m[1] or '' } end
local now = clock()
local out = { 'OK', now }
local all = redis.call('HGETALL', KEYS[2])
local seqs, states = {}, {}
local pool
for i = 1, #all, 2 do
  if all[i] == 'pool' then
    pool = all[i + 1]
  else
    seqs[#seqs + 1], states[#states + 1] = all[i], all[i + 1]
  end
end
if pool ~= m[2] or #seqs == 0 then return out end
local js = redis.call('HMGET', prefix .. K_PROXIES, unpack(seqs))
for i = 1, #seqs do
  if js[i] then
    out[#out + 1] = js[i]
    out[#out + 1] = states[i]
  end
end
return out
