-- _lib_acquire.lua: selection and granting, shared by acquire.lua and rotate.lua
-- (joined after _lib.lua). A call serves n requests in arrival order, each as if
-- alone: a request sees the counts the ones before it left (in T), not Redis's
-- indexes, which are written once at the end.

-- Per-call state of an acquire or rotate call (reset_acquire() clears it; the
-- tables are kept across calls and refilled, see _lib.lua).
local NOW, NOW_S, NOW_US, POOL_ID, CREATED
local FENCE, FENCE_R, RR, RR_S, EXP, COOL_NEXT, WAIT_UNTIL
local RR_MOVED, EXP_MOVED, COOL_MOVED
local LIVE_ADD, LIVE_N = {}, 0 -- pending ZADD of the live set: expiry, member, ...
local EXP_LAST, EXP_LAST_S -- the last expiry written, and as a string
-- Pages of index keys read by this call (since the last flush): CACHES[key] =
-- { items = {member, score, json, count, ...}, n = items used, done, i = first
-- unseen, epoch = the EPOCH it was read in }.
local CACHES, NCACHES = {}, 0
local REQS, OUT = {}, {} -- request tables by position; the reply
local FREED, TAKEN, MORE

local function reset_acquire()
  RR_MOVED, EXP_MOVED, COOL_MOVED = false, false, false
  LIVE_N = 0
  STRAIGHT.recn = 0
  if NCACHES > 1024 then CACHES, NCACHES = {}, 0 end
  FREED, TAKEN, MORE = 0, 0, false
end

-- Consumer names already found valid (most calls repeat a few).
local NAMES, NNAMES = {}, 0

-- (A field, not a local: the chunk's 200 locals are spent.)
STRAIGHT.space = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true }

-- The header argument of acquire.lua and rotate.lua, `<limit> <grace> <n>`:
-- the reclaim limit, the record grace ms (its canonical decimal: STRAIGHT.grace in _lib.lua) and
-- the number of requests, or nil. Read once and kept: a storage sends the same
-- few call after call (a table look-up instead of three numbers to check).
STRAIGHT.heads, STRAIGHT.nheads = {}, 0
function STRAIGHT.head(s)
  local h = STRAIGHT.heads[s]
  if h then return h[1], h[2], h[3] end
  if type(s) ~= 'string' or #s > 64 then return nil end
  local a, b, c = string.match(s, '^(%d+) (%d+) (%d+)$')
  local limit, grace, n = int_in(a, 1, MAX_RECLAIM), STRAIGHT.grace(b),
    int_in(c, 1, MAX_REQUESTS)
  if not limit or not grace or not n then return nil end
  if STRAIGHT.nheads >= 1024 then STRAIGHT.heads, STRAIGHT.nheads = {}, 0 end
  STRAIGHT.heads[s] = { limit, grace, n }
  STRAIGHT.nheads = STRAIGHT.nheads + 1
  return limit, grace, n
end

-- '0'..'1100' -> the number: small arguments read by a table look-up, not
-- tonumber (filled on first use: loading a library runs no standard library).
local SMALL, SMALL_S
local function small_numbers()
  SMALL, SMALL_S = {}, {}
  for i = 0, 1100 do
    local t = string.format('%d', i)
    SMALL[t], SMALL_S[i] = i, t
  end
end

-- A small integer as an argument for Redis (a number costs Redis a '%.17g').
local function small_text(i)
  if not SMALL then small_numbers() end
  return SMALL_S[i] or fmt_int(i)
end

local ORDER_OF = { least_used = 'load', lowest_latency = 'lat', first_available = 'seq',
  round_robin = 'rr', random = 'rnd', best_success = 'succ' }

-- The filter's shape: every field of the right type, nesting bounded.
local check_filter
local function filter_checker()
  local TEXT = { country = true, source = true, city = true, isp = true }
  local NUM = { asn = true, latitude = true, longitude = true, radius_km = true }
  local LIST = { any_of = true, all_of = true, none_of = true }
  local function check(f, depth, nodes)
    nodes[1] = nodes[1] + 1
    if depth > 5 or nodes[1] > 64 or type(f) ~= 'table' then return false end
    for k, v in pairs(f) do
      if TEXT[k] then
        if type(v) ~= 'string' then return false end
      elseif NUM[k] then
        if type(v) ~= 'number' then return false end
      elseif LIST[k] then
        if type(v) ~= 'table' then return false end
        for _, sub in ipairs(v) do
          if not check(sub, depth + 1, nodes) then return false end
        end
      else
        return false
      end
    end
    return true
  end
  return check
end

local function declared(tag)
  return DECLARED[string.match(tag, '^([a-z]+)=')] == true
end

-- The request table that position `slot` owns (reused across calls), now the
-- request of that position. REQS[slot] may instead be a table it shares: the
-- request before it, or a spec kept by the pool (see read_request()), which
-- nothing writes; a request's consumer is STRAIGHT.cons[slot], not in its table.
STRAIGHT.own, STRAIGHT.cons = {}, {}
local function req_table(slot)
  local own = STRAIGHT.own
  local r = own[slot]
  if not r then
    r = { dur = 0, dur_s = '', ttl_s = '', selector = '', json = '', rnd = 0,
      reqk = 0, sessk = 0, sess_ms_s = '', sitek = 0, dtags = {}, test = false, filter = false,
      order = false, fast = false, noorder = false, exact_s = '', tickk = 0, tick_s = '',
      tick_ms = 0, tick_more = false }
    own[slot] = r
  end
  REQS[slot] = r
  return r
end

-- Whether `c` is a good consumer name (remembered once found good).
local function consumer_ok(c)
  if NAMES[c] then return true end
  if not is_text(c, 128) or STRAIGHT.space[string.byte(c, 1)]
    or STRAIGHT.space[string.byte(c, -1)] then
    return false
  end
  if NNAMES >= 4096 then NAMES, NNAMES = {}, 0 end
  NAMES[c] = true
  NNAMES = NNAMES + 1
  return true
end

-- Reads the acquire block at ARGV[at]. The full block: the mark '\2' (no
-- consumer name holds a control character), then, from the argument after it,
--   +0 consumer name   +1 duration ms   +2 the request key's TTL ms (duration +
--   grace; a live lease's record has none)
--   +3 selector   +4 filter JSON or ''
--   +5 '1' when the filter is exactly one exact-match attribute, else '0'
--   +6 random 0..2^31   +7 KEYS index of its request key, or 0
--   +8 KEYS index of its sticky session's key, or 0   +9 how long the session
--   keeps its proxy, ms (0 without one)   +10 KEYS index of its site's key, or 0
--   +11 KEYS index of its pool's `P tickets` when it holds a fair waiter's
--   ticket (`P tickets:until` is the key after it; the library sends both once
--   per call, as KEYS[3] and KEYS[4]), or 0   +12 the ticket's
--   number, or 0   +13 how long the ticket is honoured after this attempt, ms,
--   or 0 (see _lib_fair.lua)
--   +14 t, then +15.. t required tags `<attr>=<percent-encoded value>`
-- or, for a request that asks what the one before it asked (the usual batch: a
-- pool of workers asking the same thing) and has no request id, no session, no
-- site, no ticket and another selector than random, the short block: +0 its
-- consumer name alone. One argument instead of fifteen: Redis parses fourteen
-- fewer (each FCALL argument costs Redis about 1,300 instructions: parsed,
-- interned for ARGV, freed), and the request is not checked and parsed again,
-- only its consumer.
-- or the spec block of a request with no request id, no session, no site, no
-- ticket and another selector than random: +0 '\1' (no consumer name holds a
-- control character), +1 consumer name, +2 the spec: the full block's +1..+14..
-- joined by '\n' (the random number, the request, session, site and ticket key
-- indexes, the session's ms and the ticket's fields '0'). A spec is read and checked once
-- per pool settings and kept (POOL.specs): the usual request, the same
-- spec call after call, costs a table look-up and its consumer's check.
-- `slot` is the request's position (its table is reused across calls).
-- Returns the request and the next index, or nil and an error message. Called
-- after the pool's settings are read (a filter is decoded only when a candidate
-- must be tested against it), before anything is written.
local read_request_full
local function read_request(at, slot)
  local a = ARGV[at]
  if a == '\1' then return STRAIGHT.spec(at, slot) end
  if a == '\2' then return read_request_full(at + 1, slot, ARGV) end
  local prev = slot > 1 and REQS[slot - 1]
  if not prev or prev.reqk ~= 0 or prev.sessk ~= 0 or prev.sitek ~= 0 or prev.tickk ~= 0
    or prev.order == 'rnd' or prev.order == 'succ' then
    return nil, 'a short request block must follow one it repeats'
  end
  if not consumer_ok(a) then return nil, 'bad consumer name' end
  REQS[slot], STRAIGHT.cons[slot] = prev, a
  return prev, at + 1
end

-- A copy of request `prev` in `r`; returns r.
function STRAIGHT.copy_request(r, prev)
  r.dur, r.dur_s, r.ttl_s, r.selector, r.json = prev.dur, prev.dur_s,
    prev.ttl_s, prev.selector, prev.json
  r.reqk, r.test, r.filter, r.order, r.fast, r.noorder = 0, prev.test, prev.filter, prev.order,
    prev.fast, prev.noorder
  r.sessk, r.sess_ms_s, r.sitek = 0, '', 0
  r.tickk, r.tick_s, r.tick_ms = 0, '', 0
  r.exact_s, r.rnd = prev.exact_s, 0
  local dtags, pt = r.dtags, prev.dtags
  if dtags ~= pt then
    for j = #dtags, 1, -1 do dtags[j] = nil end
    for j = 1, #pt do dtags[j] = pt[j] end
  end
  return r
end

-- The spec block at ARGV[at] (see read_request()).
STRAIGHT.spec_args = {}
function STRAIGHT.spec(at, slot)
  local c, spec = ARGV[at + 1], ARGV[at + 2]
  local specs = POOL.specs
  if not specs or POOL.nspecs >= 256 then
    specs = {}
    POOL.specs, POOL.nspecs = specs, 0
  end
  local t = specs[spec]
  if t then
    if not consumer_ok(c) then return nil, 'bad consumer name' end
    REQS[slot], STRAIGHT.cons[slot] = t, c
    return t, at + 3
  end
  -- Longer than any full block read_request_full() accepts (a 65,536-byte
  -- filter and 64 tags of 1,024 bytes); the library sends at most 4,096.
  if type(spec) ~= 'string' or #spec > 140000 then return nil, 'bad request spec' end
  -- 14 fields before the tags (the consumer's included), 64 tags at most.
  -- Read once: split into a full block (after the consumer) and read that.
  local A, k, pos = STRAIGHT.spec_args, 1, 1
  A[1] = c
  while true do
    local e = string.find(spec, '\n', pos, true)
    k = k + 1
    if k > 79 then return nil, 'bad request spec' end
    if not e then
      A[k] = string.sub(spec, pos)
      break
    end
    A[k] = string.sub(spec, pos, e - 1)
    pos = e + 1
  end
  for j = #A, k + 1, -1 do A[j] = nil end
  local r, nxt = read_request_full(1, slot, A)
  if not r then return nil, nxt end
  if nxt ~= k + 1 or r.reqk ~= 0 or r.sessk ~= 0 or r.sitek ~= 0 or r.tickk ~= 0
    or r.order == 'rnd' or r.order == 'succ' then
    return nil, 'bad request spec'
  end
  t = STRAIGHT.copy_request({ dtags = {} }, r)
  specs[spec] = t
  POOL.nspecs = POOL.nspecs + 1
  return r, at + 3
end

-- Reads a full block from A[at...] (ARGV, or a spec split into its fields).
read_request_full = function(at, slot, A)
  local c, dur_s, ttl_s, sel, json, exact = A[at], A[at + 1], A[at + 2], A[at + 3],
    A[at + 4], A[at + 5]
  if not consumer_ok(c) then return nil, 'bad consumer name' end
  local dur, ttl = int_in(dur_s, 1, MAX_LEASE_MS), int_in(ttl_s, 1, MAX_LEASE_MS + MAX_GRACE_MS)
  if not dur or not ttl or ttl < dur then return nil, 'bad duration' end
  local order = ORDER_OF[sel]
  if not order then return nil, 'bad selector' end
  if type(json) ~= 'string' or #json > 65536 or (exact ~= '0' and exact ~= '1') then
    return nil, 'bad filter'
  end
  if not SMALL then small_numbers() end
  local reqk, sessk, sitek, nt = SMALL[A[at + 7]], SMALL[A[at + 8]], SMALL[A[at + 10]],
    SMALL[A[at + 14]]
  if not reqk or not sessk or not sitek or not nt or nt > 64 or reqk > #KEYS or reqk == 1
    or reqk == 2 or sessk > #KEYS or sessk == 1 or sessk == 2 or (sessk > 0 and sessk == reqk)
    or sitek > #KEYS or sitek == 1 or sitek == 2
    or (sitek > 0 and (sitek == reqk or sitek == sessk)) then
    return nil, 'bad numeric argument'
  end
  if sitek > 0 and string.sub(KEYS[sitek], 1, #PK.site) ~= PK.site then
    return nil, 'bad site key'
  end
  if reqk > 0 and string.sub(KEYS[reqk], 1, #PK.req) ~= PK.req then
    return nil, 'bad request key'
  end
  local sess_ms_s = A[at + 9]
  if sessk > 0 then
    if string.sub(KEYS[sessk], 1, #PK.sess) ~= PK.sess then return nil, 'bad session key' end
    if not int_in(sess_ms_s, 1, MAX_LEASE_MS) then return nil, 'bad session ttl' end
  elseif sess_ms_s ~= '0' then
    return nil, 'bad session ttl'
  end
  local tickk, tick_s, tick_ms = SMALL[A[at + 11]], A[at + 12], 0
  if not tickk then return nil, 'bad ticket' end
  if tickk > 0 then
    tick_ms = int_in(A[at + 13], 1, MAX_LEASE_MS)
    if not STRAIGHT.ticket_keys_ok(tickk) or not STRAIGHT.ticket_ok(tick_s) or not tick_ms then
      return nil, 'bad ticket'
    end
  elseif tick_s ~= '0' or A[at + 13] ~= '0' then
    return nil, 'bad ticket'
  end
  local r = req_table(slot)
  STRAIGHT.cons[slot] = c
  r.tickk, r.tick_s, r.tick_ms = tickk, tick_s, tick_ms
  r.dur, r.dur_s, r.ttl_s, r.selector, r.json = dur, dur_s, ttl_s, sel, json
  r.rnd, r.reqk, r.test, r.filter, r.order, r.fast, r.noorder = 0, reqk, false, false, false,
    false, false
  r.exact_s, r.sessk, r.sess_ms_s, r.sitek = exact, sessk, sess_ms_s, sitek
  local dtags = r.dtags
  for j = #dtags, 1, -1 do dtags[j] = nil end
  if order == 'rnd' or order == 'succ' then
    r.rnd = int_in(A[at + 6], 0, 2147483648)
    if not r.rnd then return nil, 'bad numeric argument' end
  end
  for j = 1, nt do
    local tag = A[at + 14 + j]
    if not is_tag(tag) then return nil, 'bad tag' end
    if declared(tag) then r.dtags[#r.dtags + 1] = tag else r.test = true end
  end
  if json ~= '' and not (exact == '1' and nt == 1 and #r.dtags == 1) then r.test = true end
  if r.test then
    if json == '' then return nil, 'bad filter' end
    local ok, decoded = pcall(cjson.decode, json)
    check_filter = check_filter or filter_checker()
    if not ok or type(decoded) ~= 'table' or not check_filter(decoded, 0, { 0 }) then
      return nil, 'bad filter'
    end
    r.filter = decoded
  end
  if order == 'lat' and not HAS_ORDER.lat then
    r.noorder = 'lat'
  elseif order == 'succ' then
    -- The pool's exploration share of best_success goes to a random proxy.
    if not HAS_ORDER.succ then
      r.noorder = 'succ'
    elseif r.rnd % 1000000 < POOL.explore_ppm then
      -- The random pick's start from the number scrambled (one step of the
      -- MINSTD generator, exact in doubles): drawn so that rnd % 10^6 fell
      -- under the share, rnd itself would reach only part of a large index.
      order, r.selector, r.rnd = 'rnd', 'random', (r.rnd * 48271) % 2147483647
    end
  elseif order == 'seq' and not HAS_ORDER.seq then
    order = false
  end
  r.order = order
  r.fast = not r.test and r.dtags[2] == nil and sessk == 0 and sitek == 0 and tickk == 0
    and not POOL.rate_ms and (order == 'load' or order == 'lat' or order == 'seq')
  return r, at + 15 + nt
end

-- Reads the pool's meta and settings; nil and a reply for every request when
-- the pool cannot serve them.
local function begin(prefix)
  local m, why, found = open_pool('fence', 'exp', 'cool_next', 'wait_until')
  if not m then return why, found end
  POOL_ID = m[1]
  -- `fence` is a reservation: every token issued so far is at most it. This
  -- library remembers the last token it issued under the reservation it last
  -- saw; another reservation (written elsewhere: a failover, a restart) means
  -- any token up to it may have been issued.
  FENCE_R = tonumber(m[4] or '0') or 0
  if POOL.fence_r == FENCE_R and POOL.fence_last then FENCE = POOL.fence_last else FENCE = FENCE_R end
  RR, STRAIGHT.rr_unread = nil, true -- read by STRAIGHT.rr() when needed
  EXP = num(m[5])
  COOL_NEXT = num(m[6])
  WAIT_UNTIL = m[7]
  CREATED = POOL.created -- a string: rotate compares it as a number
  NOW, NOW_US, NOW_S = clock()
  return nil
end

-- The round-robin cursor (`rr` in the meta: the seq last given out), a string,
-- or nil; read when a round_robin request first needs it in a call (one HGET),
-- so a call without one does not read it.
function STRAIGHT.rr()
  if STRAIGHT.rr_unread then
    RR, STRAIGHT.rr_unread = redis.call('HGET', KEYS[1], 'rr') or nil, false
  end
  return RR
end

-- The opening of acquire.lua and rotate.lua: the keys and the header argument
-- checked, the pool read (begin()). Returns the reclaim limit, the grace and n;
-- or false and the call's reply: an error, or the pool's refusal ('POOL_NOT_FOUND'
-- or 'SCHEMA <found>') for every request.
function STRAIGHT.open_call()
  reset_acquire()
  local prefix = ARGV[1]
  if not check_meta_live(prefix) then return false, fail('keys do not match the pool prefix') end
  local limit, grace, n = STRAIGHT.head(ARGV[2])
  if not limit then return false, fail('bad numeric argument') end
  local why, found = begin(prefix)
  if not why then return limit, grace, n end
  if found then why = why .. ' ' .. found end
  if n == 1 then return false, why end
  local out = {}
  for i = 1, n do out[i] = why end
  return false, out
end

-- Gives back the capacity that time freed: due leases (a bounded batch), then
-- cooldowns that are over, each only when the meta's hint says one may be due.
local function reclaim_due(limit, grace)
  if EXP and EXP <= NOW then
    -- Straight for proxies in the indexes (STRAIGHT.reclaim_indexed), so its
    -- index writes go out before a request reads an index.
    local n, more, first = reclaim(NOW, limit, grace)
    flush()
    FREED, MORE = FREED + n, more
    if first ~= EXP then EXP, EXP_MOVED = first, true end
  end
  if COOL_NEXT and COOL_NEXT <= NOW then
    -- As many as the reclaim batch; more still due (a rate-limited pool rests
    -- a proxy per lease) make NONE a RETRY, and the storage runs cleanup.
    local lifted, first = lift_cooldowns(NOW, limit)
    FREED = FREED + lifted
    COOL_NEXT, COOL_MOVED = first, true
    if first and first <= NOW then MORE = true end
  end
end

-- ---------------------------------------------------------------- fast path
-- One declared tag (or none), no filter to test, an order the pool keeps: the
-- pick is the lowest of (a) the first member of that index Redis holds that no
-- earlier request of this call touched, and (b) every touched proxy in that
-- index that is still available, scored as it is now.
-- The key of the pool's index of order `order` and tag `tag` (`all` or
-- `<attr>=<value>`), built once per pool (in PK.idx).
function STRAIGHT.index_key(order, tag)
  local ix = PK.idx[order]
  if not ix then
    ix = {}
    PK.idx[order] = ix
  end
  local key = ix[tag]
  if not key then
    key = P .. K_IDX .. order .. ':' .. tag
    ix[tag] = key
  end
  return key
end

local function pick_fast(r, remaining)
  local tag = r.dtags[1] or 'all'
  local order = r.order
  local key = STRAIGHT.index_key(order, tag)
  local c = CACHES[key]
  if not c then
    c = { items = {}, n = 0, done = false, i = 1, epoch = -1 }
    CACHES[key] = c
    NCACHES = NCACHES + 1
  end
  if c.epoch ~= EPOCH then
    c.n, c.done, c.i, c.epoch = 0, false, 1, EPOCH
  end
  local items = c.items
  local best_m, best_s, best_j, best_n, best_st
  local i = c.i
  while true do
    if i > c.n then
      if c.done then break end
      -- The next page, with its proxies' JSONs (and, for another order than
      -- load, their counts), enough for every request left in the call.
      local have = c.n / 4
      local want = math.min(remaining + TLN, 63) + 1
      local got = redis.call('ZRANGE', key, small_text(have), small_text(have + want - 1), 'WITHSCORES')
      local k = #got / 2
      if k < want then c.done = true end
      if k > 0 then
        local ms, js, miss = {}, {}, nil
        for j = 1, k do
          local m = got[2 * j - 1]
          ms[j] = m
          local json = known_json(m)
          if json then
            js[j] = json
          else
            miss = miss or {}
            miss[#miss + 1] = j
          end
        end
        if miss then
          local mm = {}
          for x, j in ipairs(miss) do mm[x] = ms[j] end
          local read = redis.call('HMGET', PK.proxies, unpack(mm))
          for x, j in ipairs(miss) do
            js[j] = read[x]
            remember_json(mm[x], read[x])
          end
        end
        local counts = order ~= 'load' and redis.call('ZMSCORE', PK.load_all, unpack(ms))
        local n = c.n
        for j = 1, k do
          -- The count: the load score's high part (false: not indexed there).
          local sc = num(got[2 * j])
          local cnt = sc
          if counts then cnt = counts[j] and tonumber(counts[j]) end
          items[n + 1], items[n + 2], items[n + 3] = ms[j], sc, js[j]
          items[n + 4] = cnt and math.floor(cnt / LOAD_SHIFT)
          n = n + 4
        end
        c.n = n
      end
      if i > c.n then break end
    end
    if not T[items[i]] then
      best_m, best_s, best_j, best_n = items[i], items[i + 1], items[i + 2], items[i + 3]
      break
    end
    i = i + 4
  end
  c.i = i
  -- Touched proxies, unless none can score below the page's best (TLB bounds
  -- their load scores from below): without the bound a call of n requests would
  -- look at every touched proxy n times.
  if order ~= 'load' or best_s == nil or TLB < best_s then
    local low = NO_SCORE
    for t = 1, TLN do
      local st = TL[t]
      local info = st.info
      if info then
        -- The score first: proxies this call took mostly score above the page's
        -- best, and the test is inlined (a Lua call costs Redis more than it).
        local n, sc = st.n, nil
        if order == 'load' then sc = n * LOAD_SHIFT + st.seq else sc = score(order, st) end
        if sc < low then low = sc end
        if (best_s == nil or sc < best_s) and info.ok and (info.max == nil or n < info.max)
          and (tag == 'all' or info.tagset[tag]) then
          best_m, best_s, best_st = st.m, sc, st
        end
      end
    end
    if order == 'load' then TLB = low end
  end
  if best_st or not best_m then return best_st, best_m end
  if not best_j or not best_n then
    -- A stale entry (edited by hand, say): drop it and look again.
    zr(key, best_m)
    touch(best_m, nil, 0, true)
    return nil, best_m
  end
  -- Its bound is set by serve(), once it is counted.
  return touch(best_m, best_j, best_n, true, true), best_m
end

-- ---------------------------------------------------------------- general path
-- Any filter to test, several tags, round robin, random, an order the pool does
-- not keep, a point or radius: pending writes are sent first, so Redis's indexes
-- are exact, then the indexes are walked. Its functions are made on first use.
local general
local function make_general()
  local S = LOAD_SHIFT
  local BATCH = 32
  local EARTH_RADIUS_KM = 6371.0088
  local filter, test, sel, rnd, site

  local function fmt_num(x)
    local s = string.format('%.15g', x)
    if tonumber(s) ~= x then s = string.format('%.17g', x) end
    return s
  end

  local function haversine_km(lat1, lon1, lat2, lon2)
    local r = math.pi / 180
    local p1, p2 = lat1 * r, lat2 * r
    local dp, dl = (lat2 - lat1) * r, (lon2 - lon1) * r
    local sp, sl = math.sin(dp / 2), math.sin(dl / 2)
    local a = sp * sp + math.cos(p1) * math.cos(p2) * sl * sl
    return 2 * EARTH_RADIUS_KM * math.asin(math.min(math.sqrt(a), 1))
  end

  -- ProxyFilters::matches, on a proxy's decoded JSON.
  local function matches(f, p)
    if f.country ~= nil and (p.country == nil or string.upper(p.country) ~= string.upper(f.country)) then
      return false
    end
    if f.source ~= nil and p.source ~= f.source then return false end
    if f.city ~= nil and p.city ~= f.city then return false end
    if f.isp ~= nil and p.isp ~= f.isp then return false end
    if f.asn ~= nil and p.asn ~= f.asn then return false end
    if f.latitude ~= nil and f.longitude ~= nil then
      if p.lat == nil or p.lon == nil then return false end
      if f.radius_km ~= nil then
        if haversine_km(f.latitude, f.longitude, p.lat, p.lon) > f.radius_km then return false end
      elseif math.abs(p.lat - f.latitude) > 1e-9 or math.abs(p.lon - f.longitude) > 1e-9 then
        return false
      end
    end
    if f.any_of ~= nil and #f.any_of > 0 then
      local any = false
      for _, sub in ipairs(f.any_of) do
        if matches(sub, p) then any = true; break end
      end
      if not any then return false end
    end
    if f.all_of ~= nil then
      for _, sub in ipairs(f.all_of) do
        if not matches(sub, p) then return false end
      end
    end
    if f.none_of ~= nil then
      for _, sub in ipairs(f.none_of) do
        if matches(sub, p) then return false end
      end
    end
    return true
  end

  -- The first of these members (in order) that matches the filter and is not
  -- blocked for the request's site.
  local function first_ok(ms)
    if #ms == 0 or (not test and not site) then return ms[1] end
    local js = test and redis.call('HMGET', PK.proxies, unpack(ms))
    local blocked = site and STRAIGHT.site_blocked(site, ms, POOL_ID, NOW)
    for i, m in ipairs(ms) do
      if not (blocked and blocked[i])
        and (not test or (js[i] and matches(filter, cjson.decode(js[i])))) then
        return m
      end
    end
    return nil
  end

  -- Walks `key` by rank from `start` to `stop` (or the end); the first match.
  local function walk_rank(key, start, stop)
    local i, batch = start, test and 4 or 1
    while stop == nil or i <= stop do
      local last = i + batch - 1
      if stop ~= nil and last > stop then last = stop end
      local ms = redis.call('ZRANGE', key, i, last)
      local m = first_ok(ms)
      if m then return m end
      if #ms < last - i + 1 then return nil end
      i, batch = last + 1, BATCH
    end
    return nil
  end

  -- Walks `key` by score from `min` to `max` (Redis score syntax); the first match.
  local function walk_score(key, min, max)
    local off, batch = 0, test and 4 or 1
    while true do
      local ms = redis.call('ZRANGEBYSCORE', key, min, max, 'LIMIT', off, batch)
      local m = first_ok(ms)
      if m then return m end
      if #ms < batch then return nil end
      off, batch = off + batch, BATCH
    end
  end

  -- The matching member with the lowest seq above `after`, from a load index:
  -- one walk per lease count present (documented cost O(L log n)).
  local function by_seq_in_load(key, after)
    local lo = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if not lo[2] then return nil end
    local hi = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local best
    for l = math.floor(tonumber(lo[2]) / S), math.floor(tonumber(hi[2]) / S) do
      local top = best and (best - 1) or (S - 1)
      if top > after then
        local m = walk_score(key, fmt_int(l * S + after + 1), fmt_int(l * S + top))
        if m then best = tonumber(m) end
      end
    end
    return best and fmt_int(best)
  end

  local function from_index(tag)
    local load = P .. K_IDX .. 'load:' .. tag
    if sel == 'least_used' then
      return walk_rank(load, 0, nil)
    elseif sel == 'lowest_latency' then
      return walk_rank(P .. K_IDX .. 'lat:' .. tag, 0, nil)
    elseif sel == 'best_success' then
      return walk_rank(P .. K_IDX .. 'succ:' .. tag, 0, nil)
    elseif sel == 'first_available' then
      if HAS_ORDER.seq then return walk_rank(P .. K_IDX .. 'seq:' .. tag, 0, nil) end
      return by_seq_in_load(load, -1)
    elseif sel == 'round_robin' then
      local rr = STRAIGHT.rr()
      local c = rr and tonumber(rr) or -1
      if HAS_ORDER.seq then
        local key = P .. K_IDX .. 'seq:' .. tag
        return walk_score(key, '(' .. fmt_int(c), '+inf') or walk_score(key, '-inf', fmt_int(c))
      end
      return by_seq_in_load(load, c) or by_seq_in_load(load, -1)
    end
    local n = redis.call('ZCARD', load)
    if n == 0 then return nil end
    local start = rnd % n
    return walk_rank(load, start, n - 1) or (start > 0 and walk_rank(load, 0, start - 1)) or nil
  end

  -- Point and radius filters (attribute geo declared): the available proxies in
  -- the circle when there are at most 1,000 of them, else nil.
  local GEO_LIMIT = 1000
  local function geo_candidates()
    if not GEO or filter == nil or filter.latitude == nil or filter.longitude == nil then return nil end
    if math.abs(filter.latitude) > GEO_MAX_LAT then return nil end
    local r = (filter.radius_km or 0) * 1.001 + 0.01
    local found = redis.call('GEOSEARCH', P .. K_GEO, 'FROMLONLAT', fmt_num(filter.longitude),
      fmt_num(filter.latitude), 'BYRADIUS', fmt_num(r), 'km', 'ASC', 'COUNT', GEO_LIMIT)
    if #found >= GEO_LIMIT then return nil end
    local polar = redis.call('ZRANGE', P .. K_POLAR, 0, GEO_LIMIT)
    if #found + #polar >= GEO_LIMIT then return nil end
    for _, m in ipairs(polar) do found[#found + 1] = m end
    return found
  end

  local function from_candidates(ms)
    if #ms == 0 then return nil end
    local js = redis.call('HMGET', PK.proxies, unpack(ms))
    local sc = redis.call('ZMSCORE', PK.load_all, unpack(ms))
    local blocked = site and STRAIGHT.site_blocked(site, ms, POOL_ID, NOW)
    local succ = sel == 'best_success' and redis.call('ZMSCORE', P .. K_IDX .. 'succ:all', unpack(ms))
    local best, best_k, matched = nil, nil, {}
    for i, m in ipairs(ms) do
      if js[i] and sc[i] and not (blocked and blocked[i]) then
        local p = cjson.decode(js[i])
        if matches(filter, p) then
          local seq, k = tonumber(m), nil
          if sel == 'first_available' then
            k = seq
          elseif sel == 'least_used' then
            k = tonumber(sc[i])
          elseif sel == 'lowest_latency' then
            local l = p.latency
            if l == nil then l = LATENCY_UNKNOWN else l = math.min(math.floor(l), LATENCY_UNKNOWN - 1) end
            k = l * S + seq
          elseif sel == 'best_success' then
            k = succ[i] and tonumber(succ[i])
          elseif sel == 'round_robin' then
            k = seq
            local rr = STRAIGHT.rr()
            if rr ~= nil and seq <= tonumber(rr) then k = seq + 9007199254740992 end
          else
            matched[#matched + 1] = m
          end
          if k ~= nil and (best_k == nil or k < best_k) then best, best_k = m, k end
        end
      end
    end
    if sel == 'random' and #matched > 0 then best = matched[(rnd % #matched) + 1] end
    return best
  end
  STRAIGHT.matches = matches

  return function(r)
    filter, test, sel, rnd = r.filter or nil, r.test, r.selector, r.rnd
    site = r.sitek > 0 and KEYS[r.sitek] or nil
    -- The smallest declared index every match must be in; an empty one: no match.
    local base, base_n = 'all', nil
    for _, t in ipairs(r.dtags) do
      local n = redis.call('ZCARD', P .. K_IDX .. 'load:' .. t)
      if n == 0 then return nil end
      if base_n == nil or n < base_n then base, base_n = t, n end
    end
    if base_n == nil or base_n > BATCH then
      local cands = geo_candidates()
      if cands ~= nil then return from_candidates(cands) end
    end
    return from_index(base)
  end
end

local function pick_general(r)
  general = general or make_general()
  flush()
  local m = general(r)
  if not m then return nil, nil end
  if not T[m] then load_states({ m }) end
  return T[m], m
end

-- ---------------------------------------------------------------- serving
-- A request's reply is one string (Redis turns a table into a reply at about
-- 1,800 instructions an element, a string at about 600 whatever its length):
-- `OK <token> <acquired ms> <expires ms> <proxy seq> <pool id> <proxy json>`
-- (the JSON last: it holds spaces but no newline), or a word, with a value
-- after a space for some (see acquire.lua).
local function granted(tok, exp_s, m, json)
  return 'OK ' .. tok .. ' ' .. NOW_S .. ' ' .. exp_s .. ' ' .. m .. ' ' .. POOL_ID .. ' ' .. json
end

-- Grants request `r` a lease on proxy `m`: the next fencing token, and the
-- lease record. Returns the token, as a number and in decimal, and the expiry.
local function grant(r, m, consumer)
  local token = FENCE + 1
  if NOW_US > token then token = NOW_US end
  FENCE = token
  if token > FENCE_R then
    -- Reserve the next second of tokens: `fence` is written about once a second
    -- per pool, and before any record that holds a token above the old one.
    FENCE_R = token + 1000000 -- a second of tokens, in µs
    redis.call('HSET', KEYS[1], 'fence', fmt_int(FENCE_R))
  end
  POOL.fence_r, POOL.fence_last = FENCE_R, FENCE
  -- The token in decimal: its ms in decimal (NOW_S, or the last other ms
  -- written, kept: the tokens of a call run on from NOW_US) and its µs digits,
  -- a concatenation where a format costs Redis about twice as much.
  local us = token % 1000
  local ms = (token - us) / 1000
  local tok
  if ms == NOW then
    tok = NOW_S .. PAD3[us]
  else
    if ms ~= STRAIGHT.tok_ms then STRAIGHT.tok_ms, STRAIGHT.tok_ms_s = ms, fmt_int(ms) end
    tok = STRAIGHT.tok_ms_s .. PAD3[us]
  end
  -- The record has no TTL while the lease is live (the live set holds its
  -- expiry): it gets the grace when the lease leaves the live set (released,
  -- reclaimed). So the records of a call go in one MSET (write_records(), once
  -- the live set is written). A request id's goes at once, for a later request
  -- of the call with the same id, with the request key's TTL (duration + grace:
  -- a record that never joins the live set, after a failed command later in
  -- the call, still expires; an extend or a release sets its TTL anew).
  local rec = 'active ' .. m .. ' ' .. NOW_S .. ' ' .. r.dur_s .. ' ' .. consumer
  if r.reqk > 0 then
    redis.call('SET', P .. tok, rec .. '\t' .. string.sub(KEYS[r.reqk], #PK.req + 1), 'PX',
      r.ttl_s, 'GET')
  else
    local w, n = STRAIGHT.recw, STRAIGHT.recn
    w[n + 1], w[n + 2] = P .. tok, rec
    STRAIGHT.recn = n + 2
  end
  return token, tok, NOW + r.dur
end

-- Writes the records grant() left pending: SET for one (with GET: a SET
-- answers a status, which Redis gives a script as a new table, {ok = 'OK'};
-- with GET it answers the old value, here none), else one MSET.
STRAIGHT.recw, STRAIGHT.recn = {}, 0
function STRAIGHT.write_records()
  local n = STRAIGHT.recn
  if n == 0 then return end
  local w = STRAIGHT.recw
  if n == 2 then
    redis.call('SET', w[1], w[2], 'GET')
  else
    redis.call('MSET', unpack(w, 1, n))
  end
  STRAIGHT.recn = 0
end

-- The proxy state of the sticky session of request `r` when it can serve `r`
-- (the proxy exists, may be leased, has a free slot and matches), else nil.
-- Its key holds `<seq> <pool id>`: a session of an earlier pool of this name
-- keeps nothing. Only requests with a session call it: GET, and the proxy's
-- state when no request of this call touched it yet.
function STRAIGHT.session_pick(r)
  local v = redis.call('GET', KEYS[r.sessk])
  if not v then return nil end
  local m, id = string.match(v, '^(%d+) (.+)$')
  if not m or id ~= POOL_ID then return nil end
  if not T[m] then load_states({ m }) end
  local st = T[m]
  if not st or not st.info or not avail(st.info, st.n) then return nil end
  local tagset = st.info.tagset
  for _, t in ipairs(r.dtags) do
    if not tagset[t] then return nil end
  end
  if r.test then
    general = general or make_general()
    if not STRAIGHT.matches(r.filter, st.info.p) then return nil end
  end
  if r.sitek > 0 and STRAIGHT.site_blocked(KEYS[r.sitek], { m }, POOL_ID, NOW)[1] then
    return nil
  end
  return st
end

-- Rests proxy state `st` after a lease under its pool's rate limit: out of the
-- indexes until NOW + the rest (its JSON's `rest`, written at the flush with
-- every library's cached JSON made stale), in P cooldown (scored by the later of
-- a cooldown's and the rest's ends; the lift in reclaim_due brings it back),
-- and the `cool_next` hint moved when it comes first. Only rate-limited pools.
function STRAIGHT.rest(st)
  -- Whole ms at or after the grant's µs plus the rest: leases start at least
  -- the spacing apart in real time, not 1 ms less.
  local until_ms = math.floor((NOW_US + POOL.rate_ms * 1000 + 999) / 1000)
  local p = {}
  for k, v in pairs(st.info.p) do p[k] = v end
  st.j = json_set(st.j, p, 'rest', until_ms)
  wmap('pj')[st.m] = st.j
  st.info = info_of(st.j)
  st.dirty = true
  bound(st)
  redis.call('ZADD', P .. K_COOLDOWN, math.max(until_ms, p.cool or 0), st.m)
  if COOL_NEXT == nil or until_ms < COOL_NEXT then COOL_NEXT, COOL_MOVED = until_ms, true end
end

-- Serves one acquire request (at position `slot`); returns its reply entry (a
-- string: see granted()).
local function serve(r, remaining, slot)
  if r.noorder then return 'NO_ORDER ' .. r.noorder end
  if r.reqk > 0 then
    -- The lease this request id got, while its record lasts and its proxy is
    -- still in the pool (a lease of a removed proxy is gone: serve anew).
    local prior = redis.call('GET', KEYS[r.reqk])
    local rec = prior and parse_record(redis.call('GET', P .. prior))
    if rec and redis.call('HEXISTS', PK.proxies, rec.seq) == 1 then
      -- Served by its earlier lease: a fair waiter leaves the queue.
      if r.tickk > 0 then STRAIGHT.ticket_leave(r) end
      return 'EXISTING ' .. prior
    end
  end
  -- A fair waiter takes a proxy only at the head of its pool's queue.
  if r.tickk > 0 and not STRAIGHT.ticket_turn(r) then return 'QUEUED' end
  local st
  if r.sessk > 0 then st = STRAIGHT.session_pick(r) end
  local kept = st ~= nil
  for _ = 1, (kept and 0 or 8) do
    local m
    if r.fast then st, m = pick_fast(r, remaining) else st, m = pick_general(r) end
    if not m then break end
    if st and st.info and avail(st.info, st.n) then break end
    -- Indexed but not available (a state edited by hand): plan() takes it out.
    if st then
      st.dirty = true
      bound(st)
    end
    st = nil
  end
  if not st then
    if MORE then return 'RETRY' end
    return 'NONE'
  end
  st.n = st.n + 1
  st.dirty = true
  bound(st)
  local _, tok, exp = grant(r, st.m, STRAIGHT.cons[slot])
  if POOL.rate_ms then STRAIGHT.rest(st) end
  -- The expiry as a string (a number argument costs Redis a '%.17g'), once per
  -- duration in a call.
  if exp ~= EXP_LAST then EXP_LAST, EXP_LAST_S = exp, fmt_int(exp) end
  LIVE_ADD[LIVE_N + 1], LIVE_ADD[LIVE_N + 2] = EXP_LAST_S, st.m .. ':' .. tok
  LIVE_N = LIVE_N + 2
  if EXP == nil or exp < EXP then EXP, EXP_MOVED = exp, true end
  if r.reqk > 0 then redis.call('SET', KEYS[r.reqk], tok, 'PX', r.ttl_s) end
  if r.sessk > 0 then
    redis.call('SET', KEYS[r.sessk], st.m .. ' ' .. POOL_ID, 'PX', r.sess_ms_s)
  end
  if r.selector == 'round_robin' and not kept then
    RR, RR_S, RR_MOVED, STRAIGHT.rr_unread = st.seq, st.m, true, false
  end
  if r.tickk > 0 then STRAIGHT.ticket_done(r) end
  TAKEN = TAKEN + 1
  return granted(tok, EXP_LAST_S, st.m, st.j)
end

-- Writes what the call changed: indexes and counts, the live set, the meta's
-- fence, cursor and hints; wakes waiters when slots freed beyond those taken.
local function finish()
  flush()
  if LIVE_N > 0 then
    -- Under 129 members the live set is a listpack, where every ZADD, ZREM and
    -- ZMSCORE scans it (callgrind, c=64 with leases released at once: most of
    -- ZADD's cost). A call that adds several leases to a set that may be one
    -- makes it a skiplist (SKIPLIST_MEMBER added first, removed again: one more
    -- ZREM), once until the set empties, as the library counts its members.
    local k = LIVE_N / 2
    local est = (POOL.live_est or 0) + k
    if k >= 2 and not POOL.live_sl and est <= 128 then
      redis.call('ZADD', PK.live, '+inf', SKIPLIST_MEMBER, unpack(LIVE_ADD, 1, LIVE_N))
      redis.call('ZREM', PK.live, SKIPLIST_MEMBER)
      POOL.live_sl = true
    else
      redis.call('ZADD', PK.live, unpack(LIVE_ADD, 1, LIVE_N))
      if est > 128 then POOL.live_sl = true end
    end
    POOL.live_est = est
  end
  -- The records after the live set: a record is never without both a TTL and
  -- a live entry, even when a command of the call fails.
  STRAIGHT.write_records()
  if RR_MOVED or EXP_MOVED or COOL_MOVED then STRAIGHT.write_hints() end
  if FREED > TAKEN then notify(WAIT_UNTIL, NOW) end
end

-- The meta's cursor and hints that moved in this call (HSET, HDEL).
function STRAIGHT.write_hints()
  local set, del = { KEYS[1] }, nil
  if RR_MOVED then
    set[#set + 1] = 'rr'
    set[#set + 1] = RR_S
  end
  if EXP_MOVED then
    if EXP then
      set[#set + 1] = 'exp'
      set[#set + 1] = fmt_int(EXP)
    else
      del = { KEYS[1], 'exp' }
    end
  end
  if COOL_MOVED then
    if COOL_NEXT then
      set[#set + 1] = 'cool_next'
      set[#set + 1] = fmt_int(COOL_NEXT)
    else
      del = del or { KEYS[1] }
      del[#del + 1] = 'cool_next'
    end
  end
  if set[2] then redis.call('HSET', unpack(set)) end
  if del then redis.call('HDEL', unpack(del)) end
end

-- ---------------------------------------------------------------- one request
-- The most common call, one least_used request with one declared tag or none,
-- no request id, nothing due to reclaim: served straight, without the touched
-- states and pending writes a batch needs (about a third of the Lua work), with
-- what serve() and finish() would give. Returns its reply; or nil, having
-- written nothing, to leave it to them (no proxy, a stale or unavailable first
-- entry, a location index to update).
-- `got`: the index's first entry with its score, when the caller read it
-- already (rotate.lua), else nil.
local function serve_one(r, got)
  if (EXP and EXP <= NOW) or (COOL_NEXT and COOL_NEXT <= NOW) then return nil end
  local tag = r.dtags[1] or 'all'
  local key = STRAIGHT.index_key('load', tag)
  got = got or redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
  local m, sc = got[1], num(got[2])
  if not m or not sc then return nil end
  local json = known_json(m)
  if not json then
    json = redis.call('HGET', PK.proxies, m)
    if not json then return nil end
    remember_json(m, json)
  end
  local info = info_of(json)
  local n = math.floor(sc / LOAD_SHIFT) + 1
  local full = info.max ~= nil and n >= info.max
  if not info.ok or (info.max ~= nil and n > info.max) or (full and info.geo) then return nil end
  local seq = num(m)
  local _, tok, exp = grant(r, m, STRAIGHT.cons[1])
  if full then
    -- Out of every index; its count goes to `held`.
    local keys = info.keys
    for k = 1, #keys do redis.call('ZREM', keys[k], m) end
    redis.call('HSET', PK.held, m, fmt_int(n))
  else
    local s = score_text(n * LOAD_SHIFT + seq)
    local keys = info.load
    for k = 1, #keys do redis.call('ZADD', keys[k], s, m) end
  end
  if exp ~= EXP_LAST then EXP_LAST, EXP_LAST_S = exp, fmt_int(exp) end
  redis.call('ZADD', PK.live, EXP_LAST_S, m .. ':' .. tok)
  POOL.live_est = (POOL.live_est or 0) + 1
  if EXP == nil or exp < EXP then redis.call('HSET', KEYS[1], 'exp', fmt_int(exp)) end
  STRAIGHT.write_records()
  TAKEN = TAKEN + 1
  return granted(tok, EXP_LAST_S, m, json)
end

-- The crawler loop's rotate when least_used gives the slot just released back
-- to the proxy that had it (it is then the least used matching proxy, as in a
-- pool whose proxies are evenly used): the proxy's count ends where it was, so
-- no index is written. Reads the record, the proxy's load score and the
-- index's first entry; when the released proxy is the pick, writes what
-- release_one() and serve_one() would (the released record, the new record,
-- the live set) but not the index entries they would take down and put back:
-- GET, ZSCORE, ZRANGE, ZREM live, SET, SET, ZADD live, against 12 for the two
-- apart. Returns the reply; or nil, having written nothing, to leave the call
-- to them, with what it read for them to use: the record (false: none; nil:
-- not read) and the index's first entry (nil: not read; read only when the
-- release cannot move it: the released proxy then scores above it).
-- `id` is the token of the lease to release, `key` its record.
function STRAIGHT.rotate_same(id, key, r, created, grace)
  if not (#id > #created or (#id == #created and id >= created)) then return nil end
  local v = redis.call('GET', key)
  local seq_s, at, dur, b = string.match(v or '', '^active (%d+) (%d+) (%d+) ()')
  if not seq_s or num(at) + num(dur) <= NOW then return nil, v end
  local m = seq_s
  local json = known_json(m)
  if not json then return nil, v end
  local info = info_of(json)
  local tag = r.dtags[1] or 'all'
  if not info.ok or (tag ~= 'all' and not info.tagset[tag]) then return nil, v end
  local mine = num(redis.call('ZSCORE', PK.load_all, m))
  if not mine or mine < LOAD_SHIFT then return nil, v end
  local n = math.floor(mine / LOAD_SHIFT)
  if info.max ~= nil and n >= info.max then return nil, v end
  local after = mine - LOAD_SHIFT -- its score once released
  local got = redis.call('ZRANGE', STRAIGHT.index_key('load', tag), '0', '0', 'WITHSCORES')
  if got[1] ~= m and not (num(got[2]) and num(got[2]) > after) then return nil, v, got end
  if redis.call('ZREM', PK.live, m .. ':' .. id) ~= 1 then return nil, v end
  live_gone(1)
  STRAIGHT.write_released(key, v, b, grace, NOW_S) -- (`b`: where <rest> starts)
  FREED = FREED + 1
  local _, tok, exp = grant(r, m, STRAIGHT.cons[1])
  if exp ~= EXP_LAST then EXP_LAST, EXP_LAST_S = exp, fmt_int(exp) end
  redis.call('ZADD', PK.live, EXP_LAST_S, m .. ':' .. tok)
  POOL.live_est = (POOL.live_est or 0) + 1
  if EXP == nil or exp < EXP then redis.call('HSET', KEYS[1], 'exp', fmt_int(exp)) end
  STRAIGHT.write_records()
  TAKEN = TAKEN + 1
  return 'released ' .. granted(tok, EXP_LAST_S, m, json)
end

-- ---------------------------------------------------------------- a batch
-- n least_used requests for the same index (one declared tag or none), no
-- request id, nothing due to reclaim: the usual batch of a pool of workers,
-- served straight, without touched states and planned writes. One ZRANGE of
-- the index's first n entries (the n requests take at most n proxies, and a
-- proxy taken scores higher, so no entry past them can be picked), HMGET
-- proxies for JSONs not remembered; then per request the lowest of the next
-- entry of the page and the proxies taken before (scored as they are now),
-- as serve() would pick; then the writes: one MSET of the records, per proxy taken one
-- entry in each load index (or, now full, out of every index and its count
-- in `held`), and finish(). Returns the reply, or nil, having written nothing,
-- to leave the call to serve() (a stale or unavailable entry, a location
-- index to update).
-- The grants of the straight ways: request i of REQS[1..n] gets a lease on
-- the candidate SCRATCH.sb_pick[i] (0: none; its member in sb_m, its JSON in
-- sb_j), its reply entry in OUT[at + i]; the records wait for
-- write_records(), the live-set entries for finish().
function STRAIGHT.grant_picks(n, at)
  local S, cons = SCRATCH, STRAIGHT.cons
  local pick, cm, cj = S.sb_pick, S.sb_m, S.sb_j
  for i = 1, n do
    local j = pick[i]
    if j == 0 then
      OUT[at + i] = 'NONE'
    else
      local m = cm[j]
      local _, tok, exp = grant(REQS[i], m, cons[i])
      if exp ~= EXP_LAST then EXP_LAST, EXP_LAST_S = exp, fmt_int(exp) end
      LIVE_ADD[LIVE_N + 1], LIVE_ADD[LIVE_N + 2] = EXP_LAST_S, m .. ':' .. tok
      LIVE_N = LIVE_N + 2
      if EXP == nil or exp < EXP then EXP, EXP_MOVED = exp, true end
      TAKEN = TAKEN + 1
      OUT[at + i] = granted(tok, EXP_LAST_S, m, cj[j])
    end
  end
  OUT[at + n + 1] = nil
end

-- The index entries of indexed proxy `m` (parsed JSON `info`) with `n` live
-- leases and load score `s` (the straight ways' writes): out of every index
-- and its count in `held` when it is now full, else its load keys at `s`.
function STRAIGHT.index_count(info, m, n, s)
  if info.max ~= nil and n >= info.max then
    local keys = info.keys
    for y = 1, #keys do zr(keys[y], m) end
    wmap('held')[m] = n
  else
    STRAIGHT.za_keys(info.load, SCS[s] or score_text(s), m)
  end
end

-- ---------------------------------------------------------------- a cycle
-- cycle.lua's straight way: r releases (tokens STRAIGHT.toks[1..r], records
-- KEYS[3..r+2]; none for acquire.lua's batches) of live, unexpired leases of
-- indexed proxies whose JSON the library remembers, then `a` least_used
-- requests for one index or for several of one attribute (REQS[1..a], see
-- STRAIGHT.index_groups), nothing due to reclaim. The acquires see
-- the slots the releases freed, scored as they are now; a proxy released and
-- taken again in the call ends with the count it had, and its index entries
-- are not written (those of the others are, once, with their final scores).
-- Reads: MGET records, ZMSCORE live, ZMSCORE load:all (the released proxies'
-- scores), one ZRANGE of the index's first `a` entries (HGET proxies for a JSON
-- not remembered, of an entry the walk reaches); writes: ZREM live, SET per released record, the new records
-- (MSET), ZADD per load key whose entries moved, ZADD live. Fills OUT (r
-- outcomes, then a entries) and returns true; or returns nil, having written
-- nothing, to leave the call to the general way.
-- rotate.lua's batches take it too (`rkeys`: the records' keys, r = a): then
-- release i is applied just before acquire i, as rotate i alone would (a
-- released proxy is a candidate from the start at the count it has then, and
-- its count goes down by one a lease only when its rotate comes).
STRAIGHT.cy = { at = {}, orig = {}, grp = {}, list = {}, seen = {}, gtag = {}, gn = {},
  reqg = {}, gof = {}, pages = {}, gk = {}, gp = {}, gpj = {}, heaps = {}, ghn = {} }

-- A binary heap of candidate positions (`H[1..n]`), least score `cs[j]` on
-- top (scores differ: they end in the seq): the n-th entry moved up to its
-- place, or the top moved down to its place.
function STRAIGHT.heap_up(H, n, cs)
  local i, j = n, H[n]
  local s = cs[j]
  while i > 1 do
    local up = (i - i % 2) / 2
    local q = H[up]
    if cs[q] < s then break end
    H[i] = q
    i = up
  end
  H[i] = j
end
function STRAIGHT.heap_down(H, n, cs)
  local i, j = 1, H[1]
  local s = cs[j]
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and cs[H[c + 1]] < cs[H[c]] then c = c + 1 end
    if cs[H[c]] > s then break end
    H[i] = H[c]
    i = c
  end
  H[i] = j
end

-- Forgets the candidates of a cycle (STRAIGHT.cy.at by member).
function STRAIGHT.cy_clear(nc)
  local at, cm = STRAIGHT.cy.at, SCRATCH.sb_m
  for j = 1, nc do at[cm[j]] = nil end
end

-- The index groups of requests REQS[1..n] for the straight way of a mixed
-- call: every request least_used, no request id, an order the pool keeps,
-- nothing due; and either one index for all, or indexes of one attribute
-- with distinct values (`country=AR`, `country=CL`: no proxy is in two of
-- them, so requests of different groups never compete for a proxy). Fills
-- STRAIGHT.cy.gtag[g] (the tag of group g), gn[g] (its requests) and
-- reqg[i] (request i's group) and returns the number of groups, or nil.
function STRAIGHT.index_groups(n)
  if (EXP and EXP <= NOW) or (COOL_NEXT and COOL_NEXT <= NOW) then return nil end
  local Y = STRAIGHT.cy
  local gtag, gn, reqg, gof = Y.gtag, Y.gn, Y.reqg, Y.gof
  local ng, attr, ok = 0, nil, true
  for i = 1, n do
    local r = REQS[i]
    if not r.fast or r.order ~= 'load' or r.reqk ~= 0 or r.noorder then
      ok = false
      break
    end
    local tag = r.dtags[1] or 'all'
    local g = gof[tag]
    if not g then
      local a_ = tag ~= 'all' and string.match(tag, '^([a-z]+)=')
      if ng > 0 and (not a_ or a_ ~= attr) then
        ok = false
        break
      end
      attr = a_
      ng = ng + 1
      g = ng
      gof[tag], gtag[g], gn[g] = g, tag, 0
    end
    gn[g] = gn[g] + 1
    reqg[i] = g
  end
  for g = 1, ng do gof[gtag[g]] = nil end
  return ok and ng or nil
end

function STRAIGHT.cycle(r, a, created, grace, rkeys)
  local G = STRAIGHT.index_groups(a)
  if not G or (r > 0 and not STRAIGHT.read_releases(r, created, NOW_S, rkeys)) then
    return nil
  end
  local S, Y = SCRATCH, STRAIGHT.cy
  local seqs, members = S.rb_seq, S.rb_member
  local cm, cs, cj, cn, ci, pick = S.sb_m, S.sb_s, S.sb_j, S.sb_n, S.sb_info, S.sb_pick
  local at, orig, grp, list, seen = Y.at, Y.orig, Y.grp, Y.list, Y.seen
  local gtag, gn, reqg = Y.gtag, Y.gn, Y.reqg
  local sc = r > 0 and redis.call('ZMSCORE', PK.load_all, unpack(seqs, 1, r))
  -- Candidates 1..nc: the released proxies first (their count down by one a
  -- lease), then the pages' entries that were not released. grp[j]: the
  -- group whose index holds candidate j (0: none of the call's).
  local nc, nt, ok = 0, 0, true
  for i = 1, r do
    local m = seqs[i]
    if seen[members[i]] then
      ok = false
      break
    end
    seen[members[i]] = true
    local j = at[m]
    if not j then
      local s = sc[i] and (NUM[sc[i]] or num(sc[i]))
      local json = s and SEQS and SEQS[m]
      local info = json and (POOL.infos[json] or info_of(json))
      if not info or not info.ok then
        ok = false
        break
      end
      nc = nc + 1
      j = nc
      at[m], cm[j], cs[j], cn[j], cj[j], ci[j], orig[j] = j, m, s, math.floor(s / LOAD_SHIFT),
        json, info, s
      local g = 0
      for x = 1, G do
        local t = gtag[x]
        if t == 'all' or info.tagset[t] == true then
          g = x
          break
        end
      end
      grp[j] = g
      nt = nt + 1
      list[nt] = j
    end
    if cn[j] < 1 then
      ok = false
      break
    end
    cn[j], cs[j] = cn[j] - 1, cs[j] - LOAD_SHIFT
  end
  for i = 1, r do seen[members[i]] = nil end
  if not ok then
    STRAIGHT.cy_clear(nc)
    return nil
  end
  if rkeys then
    -- A rotate's release counts when its turn comes (above: only checked).
    for i = 1, r do
      local j = at[seqs[i]]
      cn[j], cs[j] = cn[j] + 1, cs[j] + LOAD_SHIFT
    end
  end
  -- Per group: its page (the index's first entries, as many as its
  -- requests), the page's next entry and its candidate once made, and a
  -- binary heap of the touched candidates of its index with a free slot.
  local pages, gk, gp, gpj, heaps, ghn = Y.pages, Y.gk, Y.gp, Y.gpj, Y.heaps, Y.ghn
  for g = 1, G do
    local page = redis.call('ZRANGE', STRAIGHT.index_key('load', gtag[g]), '0',
      small_text(gn[g] - 1), 'WITHSCORES')
    pages[g], gk[g], gp[g], gpj[g], ghn[g] = page, #page / 2, 1, false, 0
    if not heaps[g] then heaps[g] = {} end
  end
  local up, down = STRAIGHT.heap_up, STRAIGHT.heap_down
  for x = 1, nt do
    local j = list[x]
    local g, mx = grp[j], ci[j].max
    if g > 0 and (mx == nil or cn[j] < mx) then
      local H, hn = heaps[g], ghn[g] + 1
      H[hn] = j
      up(H, hn, cs)
      ghn[g] = hn
    end
  end
  -- The picks, all before any write, in arrival order: per request the lowest
  -- of its group's page's next entry that the call did not touch (made a
  -- candidate only when the walk reaches it: most calls take back what they
  -- gave) and the top of its group's heap.
  for i = 1, a do
    if rkeys then
      -- Rotate i's release: its proxy's score down, moved up in its group's
      -- heap (or into it, from full).
      local j = at[seqs[i]]
      cn[j], cs[j] = cn[j] - 1, cs[j] - LOAD_SHIFT
      local g = grp[j]
      if g > 0 then
        local H, hn, h = heaps[g], ghn[g], 0
        for x = 1, hn do
          if H[x] == j then
            h = x
            break
          end
        end
        if h == 0 then
          hn = hn + 1
          H[hn], h, ghn[g] = j, hn, hn
        end
        up(H, h, cs)
      end
    end
    local g = reqg[i]
    local page, k, p, pj, H, hn = pages[g], gk[g], gp[g], gpj[g], heaps[g], ghn[g]
    while not pj and p <= k do
      local m = page[2 * p - 1]
      if at[m] then
        p = p + 1 -- released in this call: in the heap
      else
        local s = NUM[page[2 * p]] or num(page[2 * p])
        local json = SEQS and SEQS[m]
        if s and not json then
          json = redis.call('HGET', PK.proxies, m)
          if json then remember_json(m, json) end
        end
        local info = json and (POOL.infos[json] or info_of(json))
        local c = s and math.floor(s / LOAD_SHIFT)
        if not info or not info.ok or (info.max ~= nil and c >= info.max) then
          STRAIGHT.cy_clear(nc)
          return nil
        end
        nc = nc + 1
        pj = nc
        at[m], cm[pj], cs[pj], cn[pj], orig[pj], cj[pj], ci[pj], grp[pj] = pj, m, s, c, s, json,
          info, g
      end
    end
    local best = pj or 0
    if hn > 0 and (best == 0 or cs[H[1]] < cs[best]) then best = H[1] end
    if best == 0 and k >= gn[g] then
      -- (A full page always has a free slot for every request: not reached.)
      STRAIGHT.cy_clear(nc)
      return nil
    end
    if best > 0 then
      local info = ci[best]
      local c = cn[best] + 1
      cn[best], cs[best] = c, cs[best] + LOAD_SHIFT
      local free = info.max == nil or c < info.max
      if info.geo and not free then
        STRAIGHT.cy_clear(nc)
        return nil
      end
      if best == pj then
        pj, p = false, p + 1
        nt = nt + 1
        list[nt] = best
        if free then
          hn = hn + 1
          H[hn] = best
          up(H, hn, cs)
        end
      elseif free then
        down(H, hn, cs) -- the top, now scored higher
      else
        H[1] = H[hn] -- the top, now full, out
        hn = hn - 1
        if hn > 0 then down(H, hn, cs) end
      end
    end
    gp[g], gpj[g], ghn[g] = p, pj, hn
    pick[i] = best
  end
  -- The writes. The releases: out of the live set, their records released.
  if r > 0 then live_gone(redis.call('ZREM', PK.live, unpack(members, 1, r))) end
  for i = 1, r do
    STRAIGHT.write_released(rkeys and rkeys[i] or KEYS[2 + i], S.rb_rec[i], S.rb_rest[i], grace,
      NOW_S)
    OUT[i] = 'released'
  end
  FREED = FREED + r
  STRAIGHT.grant_picks(a, r)
  -- The index entries of the proxies whose count the call changed.
  for x = 1, nt do
    local j = list[x]
    if cs[j] ~= orig[j] then STRAIGHT.index_count(ci[j], cm[j], cn[j], cs[j]) end
  end
  STRAIGHT.cy_clear(nc)
  finish()
  return true
end
