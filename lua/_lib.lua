-- _lib.lua: what every v2 script shares. Not a script of its own:
-- src/redis/scripts.rs joins, at load time, the key table and limits that
-- src/redis/keys.rs generates from its Rust constants (K_*, MAX_*, SCHEMA,
-- LOAD_SHIFT), then this file, then the operation's file.
--
-- The layout (README, "Redis key schema"; `P` is the pool prefix `<ns>:{<pool>}:`):
--   P meta            hash   schema, id, name, description, attrs, orders, counters
--                            (proxies, active), next_seq, fence, rr, hints (exp, cool_next,
--                            wait_until)
--   P proxies         hash   proxy seq -> the proxy as JSON (short keys, see proxy_json below)
--   P ids:<xx>        hash   proxy id -> seq, 256 shards by the id's first two hex digits
--   P idx:<o>:<tag>   zset   available proxies (active, not cooling, a free slot) by seq;
--                            <o> is load (always), seq or lat (when declared); <tag> is `all`
--                            or `<attr>=<percent-encoded value>` for each declared attribute
--   P held            hash   seq -> live leases, for proxies with leases that are NOT in the
--                            indexes (full, inactive, cooling, banned)
--   P live            zset   live leases `<seq>:<token>` by expiry ms
--   P <lease-id>      string lease record, TTL expiry + grace (released: grace after release)
--   P req:<enc id>    string lease id an idempotent acquire got, TTL as its record
--   P cooldown        zset   cooling proxies by cooldown end ms
--   P geo / P polar   geo / zset   available proxies with a location (attribute geo)
--   P tags            set    every index tag ever used (pool removal)
--   P freed           channel  a message when a slot frees and someone waits
--
-- A proxy's live lease count lives in exactly one place: its load-index score
-- (count * 2^32 + seq) while it is available, else its `held` field (absent = 0).
--
-- Hot-path discipline: every write of a call is collected in `W` and sent at the
-- end with one multi-member command per key (see flush()); the state of every
-- proxy a call touched is kept in `T` (by seq), so later requests of the same call
-- see it without reading Redis again.

local function fail(msg)
  return redis.error_reply('ERR lighthouse: ' .. msg)
end

-- Redis time: ms and µs since the epoch, read once per script.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- Integers (times, counts, tokens: all below 2^53) in decimal. Lua's own number
-- to string conversion ('%.14g') would print a 16-digit token in e-notation.
local function fmt_int(n)
  return string.format('%d', n)
end

-- An integer in [lo, hi], or nil.
local function int_in(s, lo, hi)
  local n = tonumber(s)
  if n == nil or n < lo or n > hi or n % 1 ~= 0 then
    return nil
  end
  return n
end

-- Printable text of 1..max bytes without control characters.
local function is_text(s, max)
  return type(s) == 'string' and #s >= 1 and #s <= max and not string.find(s, '%c')
end

-- 8-4-4-4-12 hex digits.
local function is_uuid(s)
  return type(s) == 'string' and #s == 36
    and string.find(s, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') ~= nil
end

local function is_tag(s)
  return type(s) == 'string' and #s <= 1024 and string.find(s, '^[a-z]+=[A-Za-z0-9._%%%-]+$') ~= nil
end

-- Checks the pool prefix `<ns>:{<pool>}:` against a key that must be built from it.
local function check_prefix(prefix, key, suffix)
  return type(prefix) == 'string' and #prefix >= 5 and #prefix <= 200
    and string.byte(prefix, -1) == 58 and key == prefix .. suffix
end

-- The pool's meta fields every script reads first. Returns the HMGET values, or
-- nil and the reply to give when the pool is missing or being removed
-- ('POOL_NOT_FOUND'), or written by another key layout ('SCHEMA', and the
-- schema found: '' for the first layout, which had none).
local function read_meta(key, ...)
  local m = redis.call('HMGET', key, 'schema', 'id', 'removing', ...)
  if not m[2] or m[3] then
    return nil, 'POOL_NOT_FOUND'
  end
  if m[1] ~= SCHEMA then
    return nil, 'SCHEMA', m[1] or ''
  end
  return m
end

-- ---------------------------------------------------------------- lease ids
-- A lease id is a UUID made of the lease's fencing token (15 hex digits, version
-- nibble 8) and the last 17 characters of its pool's id, so the live set's
-- `<seq>:<token>` members lead to their records and a record of an earlier pool
-- of the same name is never taken for one of this pool's.
local function lease_id(token, pool_id)
  local h = string.format('%015x', token)
  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-8' .. string.sub(h, 13, 15)
    .. string.sub(pool_id, 19)
end

-- The token of a lease id made by lease_id() for this pool, or nil.
local function token_of(id, pool_id)
  if type(id) ~= 'string' or #id ~= 36 or string.sub(id, 19) ~= string.sub(pool_id, 19)
    or string.byte(id, 15) ~= 56 or string.byte(id, 9) ~= 45 or string.byte(id, 14) ~= 45 then
    return nil
  end
  return tonumber(string.sub(id, 1, 8) .. string.sub(id, 10, 13) .. string.sub(id, 16, 18), 16)
end

-- ---------------------------------------------------------------- lease records
-- `active <seq> <acquired-ms> <duration-ms> <consumer>` or
-- `released <seq> <acquired-ms> <duration-ms> <released-ms> <consumer>`;
-- expired is not written: an active record past its expiry is expired.
local function parse_record(v)
  if not v then return nil end
  local seq, at, dur, rest = string.match(v, '^active (%d+) (%d+) (%d+) (.+)$')
  if seq then
    return { state = 'active', seq = seq, at = tonumber(at), dur = tonumber(dur), consumer = rest }
  end
  local rel
  seq, at, dur, rel, rest = string.match(v, '^released (%d+) (%d+) (%d+) (%d+) (.+)$')
  if seq then
    return { state = 'released', seq = seq, at = tonumber(at), dur = tonumber(dur),
      released = tonumber(rel), consumer = rest }
  end
  return nil
end

local function active_record(seq, at, dur, consumer)
  return 'active ' .. seq .. ' ' .. fmt_int(at) .. ' ' .. fmt_int(dur) .. ' ' .. consumer
end

-- ---------------------------------------------------------------- pool settings
-- Declared attributes and orders, from the meta fields `attrs` and `orders`.
local ATTRS, ORDERS, GEO = {}, { 'load' }, false
local HAS_ORDER = { load = true }
local function read_settings(attrs, orders)
  for a in string.gmatch(attrs or '', '%S+') do
    if a == 'geo' then GEO = true else ATTRS[#ATTRS + 1] = a end
  end
  for o in string.gmatch(orders or '', '%S+') do
    if not HAS_ORDER[o] then
      HAS_ORDER[o] = true
      ORDERS[#ORDERS + 1] = o
    end
  end
end

-- ---------------------------------------------------------------- proxies
-- `<attr>=<value>` with every byte but ASCII letters, digits, '.', '_' and '-'
-- written %XX (as src/redis/keys.rs writes tags).
local function enc_byte(c)
  return string.format('%%%02X', string.byte(c))
end
local function tag_of(attr, v)
  if type(v) == 'number' then v = fmt_int(v) end
  return attr .. '=' .. string.gsub(v, '[^%w%._%-]', enc_byte)
end

local LATENCY_UNKNOWN = 1048576 -- 2^20: never measured sorts last
local GEO_MAX_LAT = 85.05112878

-- What the indexes need to know of a proxy, from its JSON: eligible (active and
-- not cooling), max (nil = unlimited), its declared tags, latency, location.
local function info_of(json)
  local p = cjson.decode(json)
  local i = { p = p, max = p.max, ok = (p.status == nil or p.status == 'active') and p.cool == nil }
  local tags, set = {}, {}
  for _, a in ipairs(ATTRS) do
    local v = p[a]
    if v ~= nil then
      local t = tag_of(a, v)
      tags[#tags + 1] = t
      set[t] = true
    end
  end
  i.tags, i.tagset = tags, set
  if HAS_ORDER.lat then
    local l = p.latency
    if l == nil then l = LATENCY_UNKNOWN else l = math.min(math.floor(l), LATENCY_UNKNOWN - 1) end
    i.latency = l
  end
  if GEO and p.lat ~= nil then i.geo = true end
  return i
end

local function avail(info, n)
  return info.ok and (info.max == nil or n < info.max)
end

-- ---------------------------------------------------------------- pending writes
-- W.z[key][member] = score (ZADD) or false (ZREM); W.held[seq] = n or false;
-- W.pj[seq] = new JSON; W.g[member] = {lon, lat} or false (geo set).
local W = { z = {}, held = {}, pj = {}, g = {} }
local P -- the pool prefix, set by the script before anything else

local function zput(key, member, score)
  local m = W.z[key]
  if not m then m = {}; W.z[key] = m end
  m[member] = score
end

-- Touched proxies: T[member] = state, TL = the same states in touch order.
-- state = { seq = number, m = member string, j = JSON, info = info_of(j),
--           n = live leases now, n0 / av0 = count and availability in Redis }
local T, TL = {}, {}

local function index_keys(info, f)
  for _, o in ipairs(ORDERS) do
    local base = P .. K_IDX .. o .. ':'
    f(base .. 'all', o)
    for _, t in ipairs(info.tags) do f(base .. t, o) end
  end
end

local function score(o, st)
  if o == 'load' then return st.n * LOAD_SHIFT + st.seq end
  if o == 'seq' then return st.seq end
  return st.info.latency * LOAD_SHIFT + st.seq
end

-- Plans the writes that take a proxy from what Redis holds (n0, av0, and the
-- index entries of `old` info, or of st.info when its indexed fields did not
-- change) to its state now.
local function plan(st, old)
  local info = st.info
  local from = old or info
  local av1 = info ~= nil and avail(info, st.n)
  local m = st.m
  if st.av0 and from and (old or not av1) then
    index_keys(from, function(key) zput(key, m, false) end)
    if from.geo then W.g[m] = false; zput(P .. K_POLAR, m, false) end
  elseif st.av0 and av1 and st.n ~= st.n0 then
    local s = st.n * LOAD_SHIFT + st.seq
    zput(P .. K_IDX .. 'load:all', m, s)
    for _, t in ipairs(info.tags) do zput(P .. K_IDX .. 'load:' .. t, m, s) end
  end
  if av1 and (old or not st.av0) then
    index_keys(info, function(key, o) zput(key, m, score(o, st)) end)
    if info.geo then
      local lat, lon = info.p.lat, info.p.lon
      if math.abs(lat) <= GEO_MAX_LAT then W.g[m] = { lon, lat } else zput(P .. K_POLAR, m, st.seq) end
    end
  end
  -- The count lives in the score while available, else in `held`.
  local was = st.av0 and 0 or st.n0
  local is = (av1 or info == nil) and 0 or st.n
  if was ~= is then
    if is > 0 then W.held[m] = is else W.held[m] = false end
  end
  st.n0, st.av0, st.dirty = st.n, av1, false
end

-- Sends every pending write: one command per key.
local function flush()
  for _, st in ipairs(TL) do
    if st.dirty then plan(st) end
  end
  for key, members in pairs(W.z) do
    local add, rem = {}, {}
    for m, s in pairs(members) do
      if s then
        add[#add + 1] = s
        add[#add + 1] = m
      else
        rem[#rem + 1] = m
      end
    end
    if #rem > 0 then redis.call('ZREM', key, unpack(rem)) end
    if #add > 0 then redis.call('ZADD', key, unpack(add)) end
  end
  local hs, hd = {}, {}
  for m, n in pairs(W.held) do
    if n then
      hs[#hs + 1] = m
      hs[#hs + 1] = n
    else
      hd[#hd + 1] = m
    end
  end
  if #hd > 0 then redis.call('HDEL', P .. K_HELD, unpack(hd)) end
  if #hs > 0 then redis.call('HSET', P .. K_HELD, unpack(hs)) end
  local pj = {}
  for m, j in pairs(W.pj) do
    pj[#pj + 1] = m
    pj[#pj + 1] = j
  end
  if #pj > 0 then redis.call('HSET', P .. K_PROXIES, unpack(pj)) end
  local ga, gr = {}, {}
  for m, g in pairs(W.g) do
    if g then
      ga[#ga + 1] = g[1]
      ga[#ga + 1] = g[2]
      ga[#ga + 1] = m
    else
      gr[#gr + 1] = m
    end
  end
  if #gr > 0 then redis.call('ZREM', P .. K_GEO, unpack(gr)) end
  if #ga > 0 then redis.call('GEOADD', P .. K_GEO, unpack(ga)) end
  W = { z = {}, held = {}, pj = {}, g = {} }
end

-- A new touched state for member `m` (a seq in decimal) whose JSON is `json` (nil: no such proxy), with
-- its count `n0` and availability `av0` as Redis holds them.
local function touch(m, json, n0, av0)
  local st = { seq = tonumber(m), m = m, j = json, n = n0, n0 = n0, av0 = av0 }
  if json then st.info = info_of(json) end
  T[m] = st
  TL[#TL + 1] = st
  return st
end

-- The states of these proxies (members: seq strings), read in three commands
-- whatever their number: the JSONs, their load-index scores, their held counts.
-- Proxies that no longer exist get a state with info = nil.
local function load_states(members)
  local want = {}
  for _, m in ipairs(members) do
    if not T[m] then want[#want + 1] = m end
  end
  if #want == 0 then return end
  local js = redis.call('HMGET', P .. K_PROXIES, unpack(want))
  local sc = redis.call('ZMSCORE', P .. K_IDX .. 'load:all', unpack(want))
  local missing = {}
  for i, m in ipairs(want) do
    if not sc[i] then missing[#missing + 1] = m end
  end
  local held = {}
  if #missing > 0 then
    local h = redis.call('HMGET', P .. K_HELD, unpack(missing))
    for i, m in ipairs(missing) do held[m] = tonumber(h[i] or '0') or 0 end
  end
  for i, m in ipairs(want) do
    if not T[m] then
      local s = sc[i]
      if s then
        touch(m, js[i] or nil, math.floor(tonumber(s) / LOAD_SHIFT), true)
      else
        touch(m, js[i] or nil, held[m], false)
      end
    end
  end
end

-- Gives one slot back to proxy `m` (a state loaded by load_states). Returns
-- whether a slot was freed (false when the proxy is gone or counted nothing).
local function give_back(m)
  local st = T[m]
  if not st or not st.info or st.n <= 0 then return false end
  st.n = st.n - 1
  st.dirty = true
  return true
end

-- Expires up to `limit` live leases whose time has come (their records stay as
-- they are: an active record past its expiry reads as expired). Returns how many
-- gave a slot back, whether more are due, and the earliest expiry left (or nil).
local function reclaim(now, limit)
  local live = P .. K_LIVE
  local due = redis.call('ZRANGEBYSCORE', live, '-inf', now, 'LIMIT', 0, limit)
  if #due == 0 then
    local first = redis.call('ZRANGE', live, 0, 0, 'WITHSCORES')
    return 0, false, tonumber(first[2] or '')
  end
  local seqs, seen, of = {}, {}, {}
  for i, member in ipairs(due) do
    local s = string.match(member, '^(%d+):')
    of[i] = s
    if s and not seen[s] then
      seen[s] = true
      seqs[#seqs + 1] = s
    end
  end
  load_states(seqs)
  local n = 0
  for i = 1, #due do
    if of[i] and give_back(of[i]) then n = n + 1 end
  end
  redis.call('ZREM', live, unpack(due))
  local more = #due >= limit and redis.call('ZCOUNT', live, '-inf', now) > 0
  local first = redis.call('ZRANGE', live, 0, 0, 'WITHSCORES')
  return n, more, tonumber(first[2] or '')
end

-- Wakes waiting acquires when a waiter announced itself until a time not past.
local function notify(wait_until, now)
  if wait_until and tonumber(wait_until) and tonumber(wait_until) >= now then
    redis.call('PUBLISH', P .. K_FREED, '1')
  end
end

-- Removes `key` from a JSON object written by proxy_json() or by these helpers
-- (values of the given kind: 'int', 'word' or 'text'); returns the new JSON.
local function json_del(j, key, old)
  if old == nil then return j end
  local text
  if type(old) == 'number' then text = fmt_int(old) else text = cjson.encode(old) end
  local needle = ',"' .. key .. '":' .. text
  local a, b = string.find(j, needle, 1, true)
  if not a then return j end
  return string.sub(j, 1, a - 1) .. string.sub(j, b + 1)
end

-- Sets `key` to `value` (a number, a string, or nil to remove it).
local function json_set(j, p, key, value)
  j = json_del(j, key, p[key])
  p[key] = value
  if value == nil then return j end
  local text
  if type(value) == 'number' then text = fmt_int(value) else text = cjson.encode(value) end
  return string.sub(j, 1, -2) .. ',"' .. key .. '":' .. text .. '}'
end

-- Lifts up to `limit` cooldowns that are over: their proxies become available
-- again. Returns how many, and the earliest cooldown end left (or nil).
local function lift_cooldowns(now, limit)
  local key = P .. K_COOLDOWN
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 then
    load_states(due)
    for _, m in ipairs(due) do
      local st = T[m]
      if st and st.info and st.info.p.cool ~= nil then
        st.j = json_set(st.j, st.info.p, 'cool', nil)
        W.pj[m] = st.j
        st.info = info_of(st.j)
        st.dirty = true
      end
    end
    redis.call('ZREM', key, unpack(due))
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return #due, tonumber(first[2] or '')
end

-- ---------------------------------------------------------------- release
-- Releases of this call, by position: prepared (records read, proxies loaded,
-- live members taken out) all at once, then applied one by one, so that
-- rotate.lua can interleave them with its acquires in arrival order.
local REL, DONE = {}, {}

-- Reads the records of these leases (ids with their record keys, built from P)
-- in one command, loads their proxies, and takes the live ones out of the live
-- set (one command each way), remembering which were there.
local function prepare_releases(ids, keys, pool_id)
  local recs
  if #keys == 1 then recs = { redis.call('GET', keys[1]) } else recs = redis.call('MGET', unpack(keys)) end
  local seqs, members, firsts, seen = {}, {}, {}, {}
  for i, id in ipairs(ids) do
    local item = { id = id, key = keys[i] }
    REL[i] = item
    if seen[id] then
      item.dup = true
    else
      seen[id] = true
      local tok = token_of(id, pool_id)
      local r = tok and parse_record(recs[i] or nil)
      if r then
        item.r = r
        r.member = r.seq .. ':' .. fmt_int(tok)
        seqs[#seqs + 1] = r.seq
        if r.state == 'active' then
          members[#members + 1] = r.member
          firsts[#firsts + 1] = item
        end
      end
    end
  end
  if #seqs > 0 then load_states(seqs) end
  local live = P .. K_LIVE
  if #members == 1 then
    firsts[1].present = redis.call('ZREM', live, members[1]) == 1
  elseif #members > 1 then
    local sc = redis.call('ZMSCORE', live, unpack(members))
    local gone = {}
    for k, item in ipairs(firsts) do
      if sc[k] then
        item.present = true
        gone[#gone + 1] = members[k]
      end
    end
    if #gone > 0 then redis.call('ZREM', live, unpack(gone)) end
  end
end

-- Applies prepared release i: its outcome (released | already_released |
-- expired | not_found) and whether it freed a slot. A live lease gives its slot
-- back exactly once; a released record is kept for `grace` after now.
local function apply_release(i, now, grace)
  local item = REL[i]
  if item.dup then
    local o = DONE[item.id] or 'not_found'
    if o == 'released' then o = 'already_released' end
    return o, false
  end
  local r, o, freed = item.r, 'not_found', false
  if r then
    local st = T[r.seq]
    if not st or not st.info then
      o = 'not_found'
    elseif r.state == 'released' then
      o = 'already_released'
    elseif r.at + r.dur <= now then
      o = 'expired'
    elseif item.present then
      o = 'released'
      if grace > 0 then
        redis.call('SET', item.key, 'released ' .. r.seq .. ' ' .. fmt_int(r.at) .. ' '
          .. fmt_int(r.dur) .. ' ' .. fmt_int(now) .. ' ' .. r.consumer, 'PX', grace)
      else
        redis.call('DEL', item.key)
      end
    end
    if item.present then freed = give_back(r.seq) end
  end
  DONE[item.id] = o
  return o, freed
end
