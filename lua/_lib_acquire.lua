-- _lib_acquire.lua: selection and granting, shared by acquire.lua and rotate.lua
-- (joined after _lib.lua). A call serves n requests in arrival order, each as if
-- alone: a request sees the counts the ones before it left (in T), not Redis's
-- indexes, which are written once at the end.

local NOW, NOW_US, GRACE, POOL_ID
local FENCE, RR, EXP, COOL_NEXT, WAIT_UNTIL
local FENCE_MOVED, RR_MOVED, EXP_MOVED, COOL_MOVED = false, false, false, false
local LIVE_ADD = {}
local C = {} -- index key -> { items = {member, score, ...}, done = bool, i = first unseen }
local FREED, TAKEN, MORE = 0, 0, false

local ORDER_OF = { least_used = 'load', lowest_latency = 'lat', first_available = 'seq',
  round_robin = 'rr', random = 'rnd' }

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

local DECLARED
local function declared(tag)
  if not DECLARED then
    DECLARED = {}
    for _, a in ipairs(ATTRS) do DECLARED[a] = true end
  end
  return DECLARED[string.match(tag, '^([a-z]+)=')] == true
end

-- Reads the acquire block at ARGV[at]:
--   +0 consumer name   +1 duration ms   +2 selector   +3 filter JSON or ''
--   +4 '1' when the filter is exactly one exact-match attribute, else '0'
--   +5 random 0..2^31   +6 KEYS index of its request key, or 0
--   +7 t, then +8.. t required tags `<attr>=<percent-encoded value>`
-- Returns the request and the next index, or nil and an error message. Called
-- after the pool's settings are read (a filter is decoded only when a candidate
-- must be tested against it), before anything is written.
local function read_request(at)
  local r = { consumer = ARGV[at], selector = ARGV[at + 2], json = ARGV[at + 3] }
  if not is_text(r.consumer, 128) or string.find(r.consumer, '^%s') or string.find(r.consumer, '%s$') then
    return nil, 'bad consumer name'
  end
  r.dur = int_in(ARGV[at + 1], 1, MAX_LEASE_MS)
  if not r.dur then return nil, 'bad duration' end
  local order = ORDER_OF[r.selector]
  if not order then return nil, 'bad selector' end
  local exact = ARGV[at + 4]
  if type(r.json) ~= 'string' or #r.json > 65536 or (exact ~= '0' and exact ~= '1') then
    return nil, 'bad filter'
  end
  r.rnd = int_in(ARGV[at + 5], 0, 2147483648)
  r.reqk = int_in(ARGV[at + 6], 0, #KEYS)
  local nt = int_in(ARGV[at + 7], 0, 64)
  if not r.rnd or not r.reqk or not nt or r.reqk == 1 or r.reqk == 2 then
    return nil, 'bad numeric argument'
  end
  if r.reqk > 0 and string.sub(KEYS[r.reqk], 1, #P + #K_REQ) ~= P .. K_REQ then
    return nil, 'bad request key'
  end
  r.dtags = {}
  for j = 1, nt do
    local tag = ARGV[at + 7 + j]
    if not is_tag(tag) then return nil, 'bad tag' end
    if declared(tag) then r.dtags[#r.dtags + 1] = tag else r.test = true end
  end
  if r.json ~= '' and not (exact == '1' and nt == 1 and #r.dtags == 1) then r.test = true end
  if r.test then
    if r.json == '' then return nil, 'bad filter' end
    local ok, decoded = pcall(cjson.decode, r.json)
    check_filter = check_filter or filter_checker()
    if not ok or type(decoded) ~= 'table' or not check_filter(decoded, 0, { 0 }) then
      return nil, 'bad filter'
    end
    r.filter = decoded
  end
  if order == 'lat' and not HAS_ORDER.lat then
    r.noorder = 'lat'
  elseif order == 'seq' and not HAS_ORDER.seq then
    order = nil
  end
  r.order = order
  r.fast = not r.test and r.dtags[2] == nil and (order == 'load' or order == 'lat' or order == 'seq')
  return r, at + 8 + nt
end

-- Reads the pool's meta and settings; nil and a reply for every request when
-- the pool cannot serve them.
local function begin(prefix, grace)
  P = prefix
  local m, why, found = read_meta(KEYS[1], 'fence', 'rr', 'exp', 'cool_next', 'wait_until', 'attrs', 'orders')
  if not m then return why, found end
  read_settings(m[9], m[10])
  POOL_ID = m[2]
  FENCE = tonumber(m[4] or '0') or 0
  RR = tonumber(m[5] or '')
  EXP = tonumber(m[6] or '')
  COOL_NEXT = tonumber(m[7] or '')
  WAIT_UNTIL = m[8]
  GRACE = grace
  NOW, NOW_US = clock()
  return nil
end

-- Gives back the capacity that time freed: due leases (a bounded batch), then
-- cooldowns that are over, each only when the meta's hint says one may be due.
local function reclaim_due(limit)
  if EXP and EXP <= NOW then
    local n, more, first = reclaim(NOW, limit)
    FREED, MORE = FREED + n, more
    if first ~= EXP then EXP, EXP_MOVED = first, true end
  end
  if COOL_NEXT and COOL_NEXT <= NOW then
    local lifted, first = lift_cooldowns(NOW, 16)
    FREED = FREED + lifted
    COOL_NEXT, COOL_MOVED = first, true
  end
end

-- ---------------------------------------------------------------- fast path
-- One declared tag (or none), no filter to test, an order the pool keeps: the
-- pick is the lowest of (a) the first member of that index Redis holds that no
-- earlier request of this call touched, and (b) every touched proxy in that
-- index that is still available, scored as it is now.
local function pick_fast(r, remaining)
  local tag = r.dtags[1] or 'all'
  local key = P .. K_IDX .. r.order .. ':' .. tag
  local c = C[key]
  if not c then
    c = { items = {}, done = false, i = 1 }
    C[key] = c
  end
  local items = c.items
  local best_m, best_s, best_st
  local i = c.i
  while true do
    if i > #items then
      if c.done then break end
      local have = #items / 2
      local want = have + math.min(remaining + #TL, 63) + 1
      local got = redis.call('ZRANGE', key, have, want - 1, 'WITHSCORES')
      for k = 1, #got, 2 do
        items[#items + 1] = got[k]
        items[#items + 1] = tonumber(got[k + 1])
      end
      if #got < (want - have) * 2 then c.done = true end
      if i > #items then break end
    end
    if not T[items[i]] then
      best_m, best_s = items[i], items[i + 1]
      break
    end
    i = i + 2
  end
  c.i = i
  for _, st in ipairs(TL) do
    local info = st.info
    if info and avail(info, st.n) and (tag == 'all' or info.tagset[tag]) then
      local s = score(r.order, st)
      if best_s == nil or s < best_s then best_m, best_s, best_st = st.m, s, st end
    end
  end
  if best_st or not best_m then return best_st, best_m end
  -- An untouched proxy: its count is in the load score.
  local n0 = best_s
  if r.order ~= 'load' then n0 = redis.call('ZSCORE', P .. K_IDX .. 'load:all', best_m) end
  local json = redis.call('HGET', P .. K_PROXIES, best_m)
  if not n0 or not json then
    -- A stale entry (edited by hand, say): drop it and look again.
    zput(key, best_m, false)
    touch(best_m, nil, 0, true)
    return nil, best_m
  end
  return touch(best_m, json, math.floor(tonumber(n0) / LOAD_SHIFT), true), best_m
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
  local filter, test, sel, rnd

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

  -- The first of these members (in order) that matches the filter.
  local function first_ok(ms)
    if not test or #ms == 0 then return ms[1] end
    local js = redis.call('HMGET', P .. K_PROXIES, unpack(ms))
    for i, m in ipairs(ms) do
      if js[i] and matches(filter, cjson.decode(js[i])) then return m end
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
    elseif sel == 'first_available' then
      if HAS_ORDER.seq then return walk_rank(P .. K_IDX .. 'seq:' .. tag, 0, nil) end
      return by_seq_in_load(load, -1)
    elseif sel == 'round_robin' then
      local c = RR or -1
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
    local js = redis.call('HMGET', P .. K_PROXIES, unpack(ms))
    local sc = redis.call('ZMSCORE', P .. K_IDX .. 'load:all', unpack(ms))
    local best, best_k, matched = nil, nil, {}
    for i, m in ipairs(ms) do
      if js[i] and sc[i] then
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
          elseif sel == 'round_robin' then
            k = seq
            if RR ~= nil and seq <= RR then k = seq + 9007199254740992 end
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

  return function(r)
    filter, test, sel, rnd = r.filter, r.test, r.selector, r.rnd
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
  C = {}
  local m = general(r)
  if not m then return nil, nil end
  if not T[m] then load_states({ m }) end
  return T[m], m
end

-- ---------------------------------------------------------------- serving
-- Serves one acquire request: its reply.
local function serve(r, remaining)
  if r.noorder then return { 'NO_ORDER', r.noorder } end
  if r.reqk > 0 then
    local prior = redis.call('GET', KEYS[r.reqk])
    if prior and redis.call('EXISTS', P .. prior) == 1 then return { 'EXISTING', prior } end
  end
  local st
  for _ = 1, 8 do
    local m
    if r.fast then st, m = pick_fast(r, remaining) else st, m = pick_general(r) end
    if not m then break end
    if st and st.info and avail(st.info, st.n) then break end
    -- Indexed but not available (a state edited by hand): plan() takes it out.
    if st then st.dirty = true end
    st = nil
  end
  if not st then
    if MORE then return { 'RETRY' } end
    return { 'NONE' }
  end
  st.n = st.n + 1
  st.dirty = true
  local token = math.max(FENCE + 1, NOW_US)
  FENCE, FENCE_MOVED = token, true
  local id = lease_id(token, POOL_ID)
  local exp = NOW + r.dur
  local keep = fmt_int(exp + GRACE)
  redis.call('SET', P .. id, active_record(st.m, NOW, r.dur, r.consumer), 'PXAT', keep)
  LIVE_ADD[#LIVE_ADD + 1] = exp
  LIVE_ADD[#LIVE_ADD + 1] = st.m .. ':' .. fmt_int(token)
  if EXP == nil or exp < EXP then EXP, EXP_MOVED = exp, true end
  if r.reqk > 0 then redis.call('SET', KEYS[r.reqk], id, 'PXAT', keep) end
  if r.selector == 'round_robin' then RR, RR_MOVED = st.seq, true end
  TAKEN = TAKEN + 1
  return { 'OK', id, token, NOW, exp, st.seq, st.j, POOL_ID }
end

-- Writes what the call changed: indexes and counts, the live set, the meta's
-- fence, cursor and hints; wakes waiters when slots freed beyond those taken.
local function finish()
  flush()
  if #LIVE_ADD > 0 then redis.call('ZADD', P .. K_LIVE, unpack(LIVE_ADD)) end
  local set, del = {}, {}
  local function put(field, moved, v)
    if not moved then return end
    if v then
      set[#set + 1] = field
      set[#set + 1] = fmt_int(v)
    else
      del[#del + 1] = field
    end
  end
  put('fence', FENCE_MOVED, FENCE)
  put('rr', RR_MOVED, RR)
  put('exp', EXP_MOVED, EXP)
  put('cool_next', COOL_MOVED, COOL_NEXT)
  if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
  if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
  if FREED > TAKEN then notify(WAIT_UNTIL, NOW) end
end
