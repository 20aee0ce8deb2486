-- ticket_read.lua: the tickets of a pool's queue of fair waiters that are
-- honoured now, head first (see _lib_fair.lua); read-only.
--
-- KEYS[1]  P meta     KEYS[2]  P tickets     KEYS[3]  P tickets:until
-- ARGV[1]  pool prefix P
-- ARGV[2]  most tickets to look at, from the head (1..MAX_ADD)
--
-- Reply: {'OK', number, honoured until ms, number, until ms, ...} (lapsed
-- tickets not yet dropped are left out)
--     or {'POOL_NOT_FOUND'} (no such pool, or being removed) or {'SCHEMA', found}
-- Errors: bad arguments.
--
-- Calls: HMGET meta, TIME, ZRANGE, ZMSCORE. Cost O(log n + k).

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) or KEYS[2] ~= prefix .. STRAIGHT.K_TICKETS
  or KEYS[3] ~= prefix .. STRAIGHT.K_TICKET_ENDS then
  return fail('keys do not match the pool prefix')
end
local k = int_in(ARGV[2], 1, LIMITS.MAX_ADD)
if not k then return fail('bad count') end
local m, why, found = read_meta(KEYS[1])
if not m then return { why, found } end
local now = clock()
local out = { 'OK' }
local numbers = redis.call('ZRANGE', KEYS[2], 0, k - 1)
if numbers[1] then
  local ends = redis.call('ZMSCORE', KEYS[3], unpack(numbers))
  for i, n in ipairs(numbers) do
    local until_ms = tonumber(ends[i] or '')
    if until_ms and until_ms > now then
      out[#out + 1] = tonumber(n)
      out[#out + 1] = until_ms
    end
  end
end
return out
