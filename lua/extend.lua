-- extend.lua: renew a live lease: it now expires `duration` from now (Redis
-- time), in the live set and in its record (which has no TTL while the lease
-- is live), and in its request key's TTL (expiry + grace), when it was
-- acquired with a request id.
--
-- KEYS[1]  P meta   KEYS[2]  P live   KEYS[3]  P <token>
-- ARGV[1]  pool prefix P    ARGV[2]  the lease's token    ARGV[3]  duration ms (1..MAX_LEASE_MS)
-- ARGV[4]  record grace ms (0..MAX_GRACE_MS)
--
-- Reply: {'OK', expires_ms}
--     or {'LOST', 'released' | 'expired' | 'unknown'}: not held any more; nothing
--        written (an expired lease waits for reclaim, which gives its slot back once)
--     or {'SCHEMA', found}
-- Errors (nothing written): bad arguments.
--
-- Calls: TIME, HMGET meta, GET record, HEXISTS proxies, ZSCORE live, ZADD live,
-- SET record: 7 (a lease acquired with a request id: GET and SET of its request
-- key, which lives as long as the record). Cost O(log L).

local prefix = ARGV[1]
local id = ARGV[2]
if not check_prefix(prefix, KEYS[1], K_META) or KEYS[2] ~= prefix .. K_LIVE
  or not is_token(id) or KEYS[3] ~= prefix .. id then
  return fail('keys do not match the pool prefix')
end
local duration = int_in(ARGV[3], 1, MAX_LEASE_MS)
local grace = int_in(ARGV[4], 0, MAX_GRACE_MS)
if not duration or not grace then return fail('bad numeric argument') end

P = prefix
local m, why, found = read_meta(KEYS[1], 'created')
if not m then
  if why == 'SCHEMA' then return { 'SCHEMA', found } end
  return { 'LOST', 'unknown' }
end
local now = clock()
local r = tonumber(id) >= (tonumber(m[4] or '0') or 0) and parse_record(redis.call('GET', KEYS[3]))
if not r then return { 'LOST', 'unknown' } end
-- A lease whose proxy was removed is unknown, whatever its record says.
if redis.call('HEXISTS', prefix .. K_PROXIES, r.seq) == 0 then return { 'LOST', 'unknown' } end
if r.state == 'released' then return { 'LOST', 'released' } end
local member = r.seq .. ':' .. id
local at = tonumber(r.at)
if at + tonumber(r.dur) <= now or not redis.call('ZSCORE', KEYS[2], member) then
  return { 'LOST', 'expired' }
end
local expires = now + duration
redis.call('ZADD', KEYS[2], 'XX', expires, member)
local until_s = fmt_int(expires + grace)
-- (A live lease's record has no TTL: see grant() in _lib_acquire.lua.)
redis.call('SET', KEYS[3], 'active ' .. r.seq .. ' ' .. r.at .. ' ' .. fmt_int(expires - at) .. ' '
  .. r.consumer .. req_tail(r), 'GET')
if r.req then
  -- Its request id answers a retry with this lease until its new expiry and
  -- the grace (the key still names this lease: nobody reused the id since).
  local rk = prefix .. K_REQ .. r.req
  if redis.call('GET', rk) == id then redis.call('SET', rk, id, 'PXAT', until_s) end
end
return { 'OK', expires }
