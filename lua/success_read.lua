-- success_read.lua: the success scores a pool keeps (pools that keep the
-- success order, see src/success.rs); read-only.
--
-- KEYS[1]  P meta      KEYS[2]  P succ
-- ARGV[1]  pool prefix P
--
-- Reply: {'OK', proxy JSON, evidence, ...}: each proxy that still exists, with
-- its evidence as report.lua writes it (`<successes> <reports> <ms of the last
-- report>`); or {'NOT_FOUND'} (no such pool, or being removed) | {'SCHEMA', found}
--
-- Calls: HMGET meta, HGETALL succ, HMGET proxies. Cost O(k) for k proxies
-- with a report.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
if KEYS[2] ~= prefix .. K_SUCC then return fail('bad success key') end
local m = redis.call('HMGET', KEYS[1], 'schema', 'id', 'removing')
if not m[2] or m[3] then return { 'NOT_FOUND' } end
if m[1] ~= SCHEMA then return { 'SCHEMA', m[1] or '' } end
local out = { 'OK' }
local all = redis.call('HGETALL', KEYS[2])
if #all == 0 then return out end
local seqs, evidence = {}, {}
for i = 1, #all, 2 do
  seqs[#seqs + 1], evidence[#evidence + 1] = all[i], all[i + 1]
end
local js = redis.call('HMGET', prefix .. K_PROXIES, unpack(seqs))
for i = 1, #seqs do
  if js[i] then
    out[#out + 1] = js[i]
    out[#out + 1] = evidence[i]
  end
end
return out
