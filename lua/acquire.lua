-- acquire.lua: for each of n acquire requests on one pool, pick an available
-- proxy that matches its filter, count the lease against the proxy's
-- max_concurrency and record it; first reclaim the pool's expired leases. All of
-- it is one atomic step: the storage sends concurrent acquires on one pool as
-- one call (n > 1), each request seeing the counts the ones before it left.
--
-- KEYS[1]      <ns>:{<pool>}:meta      pool hash (must exist, not being removed)
-- KEYS[2]      <ns>:{<pool>}:leases    live leases by expiry ms
-- then for request i (1..n):
-- KEYS[1+2i]   <ns>:{<pool>}:lease:<lease-id>   its new lease record (must not exist)
-- KEYS[2+2i]   <ns>:{<pool>}:request:<encoded request id>   its idempotency key
--              (read and written only when its request flag is '1')
-- ARGV[1]  pool prefix `<ns>:{<pool>}:` (KEYS must be built from it)
-- ARGV[2]  most expired leases to reclaim in this call (1..100000)
-- ARGV[3]  record grace ms (how long a finished record is kept after expiry)
-- ARGV[4]  n, the number of requests (1..1000), then each request's block:
--   +0 lease id (a UUID; checked for its shape: 36 bytes, dashes, no ':')
--   +1 consumer id (the same)
--   +2 consumer name (1..128 bytes)   +3 duration ms (1..604800000)
--   +4 selector: first_available | least_used | round_robin | random | lowest_latency
--   +5 filter as JSON (ProxyFilters' field names), or '' when the tags alone
--      decide (no filter, or one exact-match attribute)
--   +6 random integer 0..2^31 (random selector start; read only by that selector)
--   +7 '1' when the request carries a request id (its KEYS entry), else '0'
--   +8 number t of required index tags, then +9..+8+t the tags
--      (`<attribute>=<percent-encoded value>`: every match must have them)
--
-- Reply: one entry per request, in order:
--     {'OK', proxy_id, pool_id, acquired_at_ms, expires_at_ms, host, port,
--      protocol, has_credentials '0'|'1', username, password, fencing_token}
--     or {'EXISTING', lease_id}  this request id already got that lease (its
--                            record still exists): nothing written for it
--     or {'NONE'}            no available proxy matches
--     or {'RETRY'}           none found, but more expired leases wait for reclaim:
--                            run cleanup.lua on the pool and call again
--     or {'POOL_NOT_FOUND'}
-- The fencing token is max(the pool's last token + 1, Redis time in µs): strictly
-- increasing per pool (so per proxy), and never reused even by a pool created again.
-- Publishes on `<prefix>freed` when its reclaim freed more than one slot.
-- Errors (nothing written): bad arguments, in any request. (Lease ids are random
-- v4 UUIDs made by the client, so the record keys are new.)
--
-- Cost: O(r log n) to reclaim r <= ARGV[2] expired leases, plus per request the
-- selection: O(t + log n) with no filter or a filter of exact-match attributes
-- (the first candidate of the smallest index matches), O(k log n) for a point or
-- radius filter with k available proxies in the circle (GEOSEARCH, up to 1,000;
-- past that, like the next case); other filters (any_of, none_of) walk the
-- smallest index in batches of 32 until the first match.

local now, now_us = now_clock()
local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], 'meta') or KEYS[2] ~= prefix .. 'leases' then
  return fail('keys do not match the pool prefix')
end
local reclaim_limit = int_in(ARGV[2], 1, 100000)
local grace = int_in(ARGV[3], 0, 315360000000)
local nreq = int_in(ARGV[4], 1, 1000)
if not reclaim_limit or not grace or not nreq then return fail('bad numeric argument') end

-- The filter's shape: every field of the right type, nesting bounded. (Built on
-- the first JSON filter only: most requests have none.)
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

-- Every request is read and checked before anything is written.
local lease_prefix, request_prefix = prefix .. 'lease:', prefix .. 'request:'
local reqs = {}
local at = 5
for i = 1, nreq do
  local r = {
    lease_id = ARGV[at], consumer_id = ARGV[at + 1], consumer = ARGV[at + 2],
    selector = ARGV[at + 4], has_request = ARGV[at + 7],
    lease_key = KEYS[1 + 2 * i], request_key = KEYS[2 + 2 * i],
  }
  if not is_id(r.lease_id) or not is_id(r.consumer_id) then
    return fail('bad lease or consumer id')
  end
  if r.lease_key ~= lease_prefix .. r.lease_id then
    return fail('keys do not match the pool prefix')
  end
  if not is_text(r.consumer, 128) then return fail('bad consumer name') end
  r.duration = int_in(ARGV[at + 3], 1, 604800000)
  if not r.duration then return fail('bad duration') end
  local sel = r.selector
  if sel ~= 'least_used' and sel ~= 'first_available' and sel ~= 'round_robin'
    and sel ~= 'random' and sel ~= 'lowest_latency' then
    return fail('bad selector')
  end
  local json = ARGV[at + 5]
  if type(json) ~= 'string' then return fail('bad filter JSON') end
  if json ~= '' then
    local ok, decoded = pcall(cjson.decode, json)
    if not ok or type(decoded) ~= 'table' then return fail('bad filter JSON') end
    check_filter = check_filter or filter_checker()
    if not check_filter(decoded, 0, { 0 }) then return fail('bad filter') end
    r.filter = decoded
  end
  -- Only the random selector reads its random start.
  r.rnd = 0
  if sel == 'random' then r.rnd = int_in(ARGV[at + 6], 0, 2147483648) end
  if r.has_request ~= '0' and r.has_request ~= '1' then return fail('bad request flag') end
  if type(r.request_key) ~= 'string'
    or string.sub(r.request_key, 1, #request_prefix) ~= request_prefix then
    return fail('bad request key')
  end
  local ntags = int_in(ARGV[at + 8], 0, 64)
  if not r.rnd or not ntags then return fail('bad numeric argument') end
  r.tags = {}
  for j = 1, ntags do
    local tag = ARGV[at + 8 + j]
    if not is_tag(tag) or tag == 'all' then return fail('bad tag') end
    r.tags[j] = tag
  end
  reqs[i] = r
  at = at + 9 + ntags
end
if at ~= #ARGV + 1 then return fail('bad argument count') end

local meta = redis.call('HMGET', KEYS[1], 'id', 'removing', 'rr_cursor', 'fence', 'cool_next')
local pool_id = meta[1]
if not pool_id or meta[2] then
  local out = {}
  for i = 1, nreq do out[i] = { 'POOL_NOT_FOUND' } end
  return out
end

-- ---------------------------------------------------------------- reclaim
local reclaimed, more = reclaim(prefix, now, reclaim_limit, grace)
local freed = reclaimed
local cool_next = tonumber(meta[5] or '')
if cool_next and cool_next <= now then
  freed = freed + lift_cooldowns(prefix, now, 16, true)
end

-- ---------------------------------------------------------------- matching
-- The request being served (set by serve() below): the functions read these.
local filter, selector, rnd, tags
local cursor = tonumber(meta[3] or '')

-- The general selection (a filter to test on each candidate, several tags, round
-- robin, random, a point or radius): its functions are made on first use only,
-- since most requests take the direct path in select_proxy() below.
local select_general
local function general_selection()
  local function haversine_km(lat1, lon1, lat2, lon2)
    local r = math.pi / 180
    local p1, p2 = lat1 * r, lat2 * r
    local dp, dl = (lat2 - lat1) * r, (lon2 - lon1) * r
    local sp, sl = math.sin(dp / 2), math.sin(dl / 2)
    local a = sp * sp + math.cos(p1) * math.cos(p2) * sl * sl
    return 2 * EARTH_RADIUS_KM * math.asin(math.min(math.sqrt(a), 1))
  end

  -- Port of ProxyFilters::matches.
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

  local function attrs(id)
    local v = redis.call('HMGET', prefix .. 'proxy:' .. id,
      'country', 'source', 'city', 'isp', 'asn', 'latitude', 'longitude', 'seq', 'current_leases',
      'latency_ms')
    return {
      country = v[1] or nil, source = v[2] or nil, city = v[3] or nil, isp = v[4] or nil,
      asn = tonumber(v[5] or ''), lat = tonumber(v[6] or ''), lon = tonumber(v[7] or ''),
      seq = tonumber(v[8] or ''), leases = tonumber(v[9] or '0') or 0,
      latency = tonumber(v[10] or ''),
    }
  end

  local function ok(id)
    return filter == nil or matches(filter, attrs(id))
  end

  -- ---------------------------------------------------------------- selection
  local BATCH = 32

  -- Without a filter the first candidate always matches: fetch just one.
  local function first_batch()
    if filter == nil then return 1 end
    return 4
  end

  -- Walks `key` by rank from `start` to the end; returns the first match.
  local function walk_rank(key, start, stop)
    local i = start
    local batch = first_batch()
    while stop == nil or i <= stop do
      local last = i + batch - 1
      batch = BATCH
      if stop ~= nil and last > stop then last = stop end
      local ids = redis.call('ZRANGE', key, i, last)
      for _, id in ipairs(ids) do
        if ok(id) then return id end
      end
      if #ids < last - i + 1 then return nil end
      i = last + 1
    end
    return nil
  end

  -- Walks `key` by score from `min` to `max` (Redis score syntax); first match.
  local function walk_score(key, min, max)
    local offset = 0
    local batch = first_batch()
    while true do
      local ids = redis.call('ZRANGEBYSCORE', key, min, max, 'LIMIT', offset, batch)
      for _, id in ipairs(ids) do
        if ok(id) then return id end
      end
      if #ids < batch then return nil end
      offset = offset + batch
      batch = BATCH
    end
  end

  local function select_from_index(tag)
    local seq_key = prefix .. 'avail:seq:' .. tag
    if selector == 'first_available' then
      return walk_rank(seq_key, 0, nil)
    elseif selector == 'least_used' then
      return walk_rank(prefix .. 'avail:load:' .. tag, 0, nil)
    elseif selector == 'lowest_latency' then
      return walk_rank(prefix .. 'avail:lat:' .. tag, 0, nil)
    elseif selector == 'round_robin' then
      local c = cursor or -1
      return walk_score(seq_key, '(' .. fmt_int(c), '+inf') or walk_score(seq_key, '-inf', fmt_int(c))
    else
      local n = redis.call('ZCARD', seq_key)
      if n == 0 then return nil end
      local start = rnd % n
      return walk_rank(seq_key, start, n - 1) or (start > 0 and walk_rank(seq_key, 0, start - 1)) or nil
    end
  end

  -- Point and radius filters: the available proxies in the circle, when there are
  -- at most GEO_LIMIT of them (else nil: the caller walks an index instead).
  local GEO_LIMIT = 1000
  local function geo_candidates()
    if filter == nil or filter.latitude == nil or filter.longitude == nil then return nil end
    if math.abs(filter.latitude) > GEO_MAX_LAT then return nil end
    -- Redis' earth radius is 0.03% larger than EARTH_RADIUS_KM: search wider, then
    -- check exactly with matches().
    local r = (filter.radius_km or 0) * 1.001 + 0.01
    local found = redis.call('GEOSEARCH', prefix .. 'avail:geo', 'FROMLONLAT',
      fmt_num(filter.longitude), fmt_num(filter.latitude), 'BYRADIUS', fmt_num(r), 'km',
      'ASC', 'COUNT', GEO_LIMIT)
    if #found >= GEO_LIMIT then return nil end
    local polar = redis.call('ZRANGE', prefix .. 'avail:polar', 0, GEO_LIMIT)
    if #found + #polar >= GEO_LIMIT then return nil end
    for _, id in ipairs(polar) do found[#found + 1] = id end
    return found
  end

  local function select_from_candidates(ids)
    local best, best_key, matched = nil, nil, {}
    for _, id in ipairs(ids) do
      local p = attrs(id)
      if p.seq ~= nil and matches(filter, p) then
        local key
        if selector == 'first_available' then
          key = p.seq
        elseif selector == 'least_used' then
          key = p.leases * LOAD_SHIFT + p.seq
        elseif selector == 'lowest_latency' then
          key = latency_score(p)
        elseif selector == 'round_robin' then
          key = p.seq
          if cursor ~= nil and p.seq <= cursor then key = p.seq + 9007199254740992 end
        else
          matched[#matched + 1] = id
        end
        if key ~= nil and (best_key == nil or key < best_key) then
          best, best_key = id, key
        end
      end
    end
    if selector == 'random' and #matched > 0 then
      best = matched[(rnd % #matched) + 1]
    end
    return best
  end


  return function()
    -- The smallest index every match must be in; an empty one means no match.
    local base, base_n = 'all', nil
    for _, tag in ipairs(tags) do
      local n = redis.call('ZCARD', prefix .. 'avail:seq:' .. tag)
      if n == 0 then return nil end
      if base_n == nil or n < base_n then base, base_n = tag, n end
    end
    if base_n == nil or base_n > BATCH then
      local cands = geo_candidates()
      if cands ~= nil then return select_from_candidates(cands) end
    end
    return select_from_index(base)
  end
end

local function select_proxy()
  -- No candidate to test (no JSON filter) and at most one tag: the pick is the
  -- first member of that tag's index (or the pool's) in the selector's order.
  if filter == nil and tags[2] == nil then
    local order
    if selector == 'least_used' then
      order = 'load'
    elseif selector == 'first_available' then
      order = 'seq'
    elseif selector == 'lowest_latency' then
      order = 'lat'
    end
    if order then
      return redis.call('ZRANGE', prefix .. 'avail:' .. order .. ':' .. (tags[1] or 'all'), '0', '0')[1]
    end
  end
  select_general = select_general or general_selection()
  return select_general()
end

-- ---------------------------------------------------------------- each request
local last_token = tonumber(meta[4] or '0') or 0
local fence_moved, cursor_moved = false, false
local now_s = fmt_int(now)
local out = {}

-- Serves one request: its reply.
local function serve(r)
  if r.has_request == '1' then
    local prior = redis.call('GET', r.request_key)
    if prior and redis.call('EXISTS', lease_prefix .. prior) == 1 then
      return { 'EXISTING', prior }
    end
  end
  filter, selector, rnd, tags = r.filter, r.selector, r.rnd, r.tags
  -- The indexes list only available proxies; a proxy hash edited by hand can
  -- disagree. Such a stale entry is dropped (the audit rebuilds it fully) and the
  -- selection runs again, a few times at most.
  local id, pkey, ep, old
  for _ = 1, 4 do
    id = select_proxy()
    if not id then
      if more then return { 'RETRY' } end
      return { 'NONE' }
    end
    pkey = prefix .. 'proxy:' .. id
    ep = redis.call('HMGET', pkey, 'status', 'max_concurrency', 'current_leases', 'seq', 'tags',
      'latitude', 'longitude', 'cooldown_until_ms', 'latency_ms', 'host', 'port', 'protocol',
      'username', 'password')
    old = snapshot_of(ep)
    if old and old.available then break end
    if old then
      index_remove(prefix, id, old)
    else
      index_remove(prefix, id, { tags = '', lat = nil })
    end
    old = nil
  end
  if not old then return { 'NONE' } end

  -- Take it.
  redis.call('HINCRBY', pkey, 'current_leases', '1')
  account_leases(prefix, id, old, old.leases + 1)
  if selector == 'round_robin' then
    cursor, cursor_moved = old.seq, true
  end
  local expires = now + r.duration
  last_token = math.max(last_token + 1, now_us)
  fence_moved = true
  -- Each number is printed once (a number handed to redis.call is printed anew).
  local expires_s, token_s, keep_s = fmt_int(expires), fmt_int(last_token), fmt_int(expires + grace)
  local seq_s = fmt_int(old.seq)
  if r.has_request == '1' then
    redis.call('SET', r.request_key, r.lease_id, 'PXAT', keep_s)
  end
  local record = {
    'id', r.lease_id, 'pool_id', pool_id, 'proxy_id', id, 'proxy_seq', seq_s,
    'consumer_id', r.consumer_id, 'consumer', r.consumer, 'status', 'active',
    'acquired_at_ms', now_s, 'expires_at_ms', expires_s, 'token', token_s,
    'host', ep[10], 'port', ep[11], 'protocol', ep[12],
  }
  local has_cred = '0'
  if ep[13] then
    has_cred = '1'
    record[27] = 'username'
    record[28] = ep[13]
    record[29] = 'password'
    record[30] = ep[14] or ''
  end
  redis.call('HSET', r.lease_key, unpack(record))
  redis.call('PEXPIREAT', r.lease_key, keep_s)
  redis.call('ZADD', KEYS[2], expires_s, r.lease_id .. ':' .. seq_s)
  redis.call('ZADD', prefix .. 'holders', seq_s, r.lease_id)
  return { 'OK', id, pool_id, now_s, expires_s, ep[10], ep[11], ep[12], has_cred,
    ep[13] or '', ep[14] or '', token_s }
end

local taken = 0
for i = 1, nreq do
  out[i] = serve(reqs[i])
  if out[i][1] == 'OK' then taken = taken + 1 end
end
-- Slots freed here beyond those these requests took can serve waiters elsewhere.
if freed > taken then notify_freed(prefix) end
if fence_moved then
  redis.call('HSET', KEYS[1], 'fence', fmt_int(last_token))
end
if cursor_moved then
  redis.call('HSET', KEYS[1], 'rr_cursor', fmt_int(cursor))
end
return out
