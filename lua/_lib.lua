-- _lib.lua: what every v2 operation shares. The operations are the functions
-- of one Redis Functions library (`FUNCTION LOAD`, called with `FCALL`): its
-- text is src/redis/keys.rs's generated key table and limits (K_*, MAX_*,
-- SCHEMA, LOAD_SHIFT), then this file, _lib_acquire.lua and _lib_proxy.lua, then
-- each operation's file as the body of its function (see src/redis/ops/mod.rs).
-- Helpers are defined once, when the library loads, not on every call; what a
-- call changes lives in the per-call state below, which reset() clears first.
--
-- The layout (README, "Redis key schema"; `P` is the pool prefix `<ns>:{<pool>}:`):
--   P meta            hash   schema, id, name, description, attrs, orders, counters
--                            (proxies, active, banned), next_seq, fence, rr, hints (exp,
--                            cool_next, wait_until)
--   P proxies         hash   proxy seq -> the proxy as JSON (short keys, see _lib_proxy.lua)
--   P ids:<xx>        hash   proxy id -> seq, 256 shards by the id's first two hex digits
--   P idx:<o>:<tag>   zset   available proxies (active, not cooling, a free slot) by seq;
--                            <o> is load (always), seq, lat or succ (when declared); <tag> is
--                            `all` or `<attr>=<percent-encoded value>` for each declared attribute
--   P held            hash   seq -> live leases, for proxies with leases that are NOT in the
--                            indexes (full, inactive, cooling, banned)
--   P live            zset   live leases `<seq>:<token>` by expiry ms
--   P <lease-id>      string lease record, no TTL while live (released or reclaimed: grace)
--   P req:<enc id>    string lease id an idempotent acquire got, TTL duration + grace
--                            (extend: expiry + grace)
--   P cooldown        zset   cooling proxies by cooldown end ms
--   P succ            hash   seq -> success evidence (pools that keep the succ order)
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

-- Redis's Lua globals as locals of the library. In a function a global costs
-- Redis's Lua two table look-ups (its sandbox's empty globals table, then the
-- real one through a metatable), a local one upvalue read. Loading a library
-- sees only the registration API (`redis` holds it then, for the
-- register_function calls at the end), so bind() fills them on the first call.
local redis = redis
local string, math, table, cjson, unpack, tonumber, tostring, type, ipairs, pairs, pcall
local BOUND = false
local function bind()
  local G = _G
  redis, string, math, table, cjson = G.redis, G.string, G.math, G.table, G.cjson
  unpack, tonumber, tostring, type, ipairs, pairs, pcall = G.unpack, G.tonumber, G.tostring,
    G.type, G.ipairs, G.pairs, G.pcall
  -- The collector's step multiplier, 100 instead of Lua's 200. Redis forces a
  -- collector step every 50 script calls (LUA_GCSTEP), which starts a cycle
  -- even with little garbage; the default multiplier then marks this library's
  -- caches again and again. At 100 the collector still keeps pace with the
  -- garbage it is given (Lua's manual: below 100 it may never finish a cycle):
  -- 2.9% fewer Redis instructions per acquire->release at one caller, 1% at 64
  -- (benches/redis_instructions.sh), for a function-engine heap of 3.4-5.1 MB
  -- instead of 3.3-4.0 MB in a steady run. The setting is the function
  -- engine's (every library on the server shares its Lua state).
  G.collectgarbage('setstepmul', 100)
  BOUND = true
end

-- The call's keys and arguments (set by reset()), the pool prefix `P` and the
-- pool's most used keys `PK` (set by set_prefix() before anything else).
local KEYS, ARGV, P, PK

-- The keys of a pool that calls use most, built once per prefix: concatenating
-- and interning a key costs Redis's Lua more than a table look-up.
local PKS, NPKS = {}, 0
local function set_prefix(prefix)
  P = prefix
  local k = PKS[prefix]
  if not k then
    if NPKS >= 256 then PKS, NPKS = {}, 0 end
    k = { p = prefix, meta = prefix .. K_META, live = prefix .. K_LIVE, proxies = prefix .. K_PROXIES,
      held = prefix .. K_HELD, load_all = prefix .. K_IDX .. 'load:all', req = prefix .. K_REQ,
      sess = prefix .. K_SESS, site = prefix .. K_SITE, idx = {} }
    PKS[prefix] = k
    NPKS = NPKS + 1
  end
  PK = k
end

-- tonumber() of a string, remembered: Lua's tonumber runs strtod, about 1,300
-- instructions, and most numeric strings come back call after call (durations,
-- limits, seqs, the second of the clock). nil for nil or a non-number.
local NUM, NNUM = {}, 0
local function num(s)
  if s == nil or s == false then return nil end
  local n = NUM[s]
  if n == nil then
    n = tonumber(s)
    if n == nil then return nil end
    if NNUM >= 8192 then NUM, NNUM = {}, 0 end
    NUM[s] = n
    NNUM = NNUM + 1
  end
  return n
end

local function fail(msg)
  return redis.error_reply('ERR lighthouse: ' .. msg)
end

-- Integers (times, counts, tokens: all below 2^53) in decimal. Lua's own number
-- to string conversion ('%.14g') would print a 16-digit token in e-notation.
-- string.format costs Redis's Lua about 1,900 instructions (callgrind); the hot
-- paths use the cheaper forms below where they can.
local function fmt_int(n)
  return string.format('%d', n)
end

-- '000'..'999' by value (filled on first use: loading a library runs no standard
-- library): the clock's ms and µs in decimal are a concatenation, not a format.
local PAD3
local function pad3_table()
  PAD3 = {}
  for i = 0, 999 do PAD3[i] = string.format('%03d', i) end
end

-- Redis time, read once per script: ms and µs since the epoch, and the ms in
-- decimal (TIME's seconds and the ms of its µs, zero-padded).
local function clock()
  local t = redis.call('TIME')
  local s, us = NUM[t[1]] or num(t[1]), tonumber(t[2])
  if not PAD3 then pad3_table() end
  local ms = math.floor(us / 1000)
  return s * 1000 + ms, s * 1000000 + us, t[1] .. PAD3[ms]
end


-- A load-index score (count * 2^32 + seq) in decimal, remembered (bounded):
-- the same few thousand scores come back call after call.
local SCS, NSCS = {}, 0
local NEG_SHIFT = '-' .. LOAD_SHIFT -- one lease less, as a ZADD INCR increment
local function score_text(n)
  local s = SCS[n]
  if not s then
    s = string.format('%d', n)
    if NSCS >= 8192 then SCS, NSCS = {}, 0 end
    SCS[n] = s
    NSCS = NSCS + 1
  end
  return s
end

-- An integer in [lo, hi], or nil.
local function int_in(s, lo, hi)
  local n = s and NUM[s] or num(s)
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

-- Checks the pool prefix `<ns>:{<pool>}:` against a key that must be built
-- from it, and makes it the call's prefix.
local function check_prefix(prefix, key, suffix)
  if type(prefix) ~= 'string' or #prefix < 5 or #prefix > 200 or string.byte(prefix, -1) ~= 58 then
    return false
  end
  set_prefix(prefix)
  if suffix == K_META then return key == PK.meta end
  return key == prefix .. suffix
end

-- The same for the hot operations: KEYS[1] must be P meta and KEYS[2] P live.
-- The prefix of the previous call was checked then (the usual case: calls of
-- one pool in a row).
local function check_meta_live(prefix)
  if PK and PK.p == prefix then
    P = prefix
    return KEYS[1] == PK.meta and KEYS[2] == PK.live
  end
  return check_prefix(prefix, KEYS[1], K_META) and KEYS[2] == PK.live
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

-- ---------------------------------------------------------------- lease records
-- A lease record is the key `P <token>` (its fencing token in decimal: lease ids
-- are made of the token and the pool id, see src/redis/keys.rs), holding
-- `active <seq> <acquired-ms> <duration-ms> <consumer>` or
-- `released <seq> <acquired-ms> <duration-ms> <released-ms> <consumer>`, and,
-- for a lease acquired with a request id, a tab and the request key's suffix
-- (`P req:<suffix>`; a consumer name holds no control character): extend.lua
-- keeps that key until the new expiry and the grace. Expired is not written: an active
-- record past its expiry is expired. Numbers stay the strings they were read as
-- (formatting numbers costs Redis's Lua a snprintf each).
local function parse_record(v, into)
  if not v then return nil end
  local state, seq, at, dur, rel, rest = 'active', string.match(v, '^active (%d+) (%d+) (%d+) (.+)$')
  if seq then
    rest = rel
    rel = nil
  else
    state = 'released'
    seq, at, dur, rel, rest = string.match(v, '^released (%d+) (%d+) (%d+) (%d+) (.+)$')
    if not seq then return nil end
  end
  -- `rest` is the consumer, or the consumer, a tab and the request key's suffix
  -- (both not empty). A plain find: a pattern here backtracks over the whole
  -- name (callgrind: about 4 % of a release's instructions).
  local consumer, req = rest, nil
  local tab = string.find(rest, '\t', 1, true)
  if tab and tab > 1 and tab < #rest then
    consumer, req = string.sub(rest, 1, tab - 1), string.sub(rest, tab + 1)
  end
  if into then
    into.state, into.seq, into.at, into.dur, into.released = state, seq, at, dur, rel
    into.consumer, into.req, into.rest, into.member = consumer, req, rest, nil
    return into
  end
  return { state = state, seq = seq, at = at, dur = dur, released = rel, consumer = consumer,
    req = req, rest = rest }
end

-- What follows the consumer in a record: its request key's suffix, if any.
local function req_tail(r)
  if r.req then return '\t' .. r.req end
  return ''
end

-- A token argument: decimal digits of a number below 2^53 (or nil).
local function is_token(t)
  -- Anchored: an unanchored '%D' tries a match at every position (callgrind:
  -- ~5,000 instructions for a 16-digit token, about four times this).
  return type(t) == 'string' and #t <= 16 and string.find(t, '^%d+$') ~= nil
end

-- ---------------------------------------------------------------- pool settings
-- Declared attributes and orders, from the meta fields `attrs` and `orders`,
-- parsed once per pool and kept across calls with the proxies' parsed JSON (a
-- pool created again under the same name has another id, hence another entry).
local ATTRS, ORDERS, GEO, HAS_ORDER, DECLARED
local POOL -- this call's entry of POOLS
local SEQS -- POOL.seqs when open_pool() found them good in this call, else nil
local POOLS, NPOOLS = {}, 0
-- At most 4,096 proxy JSONs (and their parsed forms) kept per pool (a literal,
-- not a local: the chunk's 200 locals are spent).

-- Selects the settings of pool P (id `pool_id`, texts from its meta).
local function read_settings(pool_id, attrs, orders)
  local key = P .. (pool_id or '')
  local s = POOLS[key]
  if not s or s.attrs_text ~= attrs or s.orders_text ~= orders then
    s = { attrs = {}, orders = { 'load' }, geo = false, has = { load = true }, declared = {},
      attrs_text = attrs, orders_text = orders, infos = {}, ninfos = 0 }
    for a in string.gmatch(attrs or '', '%S+') do
      if a == 'geo' then
        s.geo = true
      else
        s.attrs[#s.attrs + 1] = a
        s.declared[a] = true
      end
    end
    for o in string.gmatch(orders or '', '%S+') do
      if not s.has[o] then
        s.has[o] = true
        s.orders[#s.orders + 1] = o
      end
    end
    if NPOOLS >= 64 then
      POOLS, NPOOLS = {}, 0
    end
    POOLS[key] = s
    NPOOLS = NPOOLS + 1
  end
  POOL = s
  ATTRS, ORDERS, GEO, HAS_ORDER, DECLARED = s.attrs, s.orders, s.geo, s.has, s.declared
end

-- read_meta() for the hot operations: the pool's `id`, `removing` and the given
-- fields in one HMGET (m[1], m[2], then m[3]...); the fixed settings (schema,
-- indexes, `created`, in POOL) are read only the first time a pool id is seen:
-- they never change for a pool id (a pool created again gets a new id, and its
-- indexes are fixed at creation). Returns m, or nil and the reply for a missing
-- pool ('POOL_NOT_FOUND') or another layout ('SCHEMA', found).
local function open_pool(...)
  local m = redis.call('HMGET', PK.meta, 'id', 'removing', 'pver', ...)
  local id = m[1]
  if not id or m[2] then return nil, 'POOL_NOT_FOUND' end
  local s = PK.pool
  if not s or PK.pool_id ~= id or not s.created then
    local f = redis.call('HMGET', PK.meta, 'schema', 'attrs', 'orders', 'created', 'rate', 'succ')
    if f[1] ~= SCHEMA then return nil, 'SCHEMA', f[1] or '' end
    read_settings(id, f[2], f[3])
    POOL.created = f[4] or '0'
    -- The rate limit's rest after each lease, ms (fixed when the pool was created).
    local leases, per = string.match(f[5] or '', '^(%d+) (%d+)$')
    -- per / leases rounded up: at most `leases` in any window of `per`.
    POOL.rate_ms = leases and math.ceil(tonumber(per) / tonumber(leases)) or nil
    -- Success scoring (pools that keep the succ order): the half-life of a
    -- report's weight, ms, and the exploration share of best_success, millionths.
    local half, explore = string.match(f[6] or '', '^(%d+) (%d+)$')
    POOL.half_life_ms = tonumber(half) or 1800000
    POOL.explore_ppm = tonumber(explore) or 50000
    PK.pool, PK.pool_id = POOL, id
  else
    POOL = s
    ATTRS, ORDERS, GEO, HAS_ORDER, DECLARED = s.attrs, s.orders, s.geo, s.has, s.declared
  end
  -- The proxies' JSONs this library read before are good while `pver` is what
  -- it was then (every write of `P proxies` bumps it: see proxies_changed()).
  local pv = m[3] or '0'
  if POOL.pver ~= pv then POOL.pver, POOL.seqs, POOL.nseqs = pv, {}, 0 end
  SEQS = POOL.seqs
  return m
end

-- The JSON of proxy `m` this library last read, while still good (see
-- open_pool()), else nil.
local function known_json(m)
  return SEQS and SEQS[m]
end

-- Remembers the JSON of proxy `m` read from `P proxies` in this call (bounded).
local function remember_json(m, json)
  if not SEQS or not json then return end
  if POOL.nseqs >= 4096 then
    SEQS = {}
    POOL.seqs, POOL.nseqs = SEQS, 0
  end
  if not SEQS[m] then POOL.nseqs = POOL.nseqs + 1 end
  SEQS[m] = json
end

-- Every write of `P proxies` comes with this: `pver` moves on, so no library
-- (this one after a restart, another after a failover) trusts a JSON it read
-- before.
local function proxies_changed()
  redis.call('HINCRBY', PK.meta, 'pver', 1)
  if POOL then POOL.pver = nil end
  SEQS = nil
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
-- not cooling), max (nil = unlimited), its declared tags, latency, location,
-- and its index keys (`keys`, with the order of each in `korder`; `load`, the
-- load-order keys). Parsed once per JSON and pool, then cached (bounded).
local function info_of(json)
  local infos = POOL.infos
  local i = infos[json]
  if i then return i end
  local p = cjson.decode(json)
  i = { p = p, max = p.max,
    ok = (p.status == nil or p.status == 'active') and p.cool == nil and p.rest == nil }
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
  local keys, korder, load = {}, {}, {}
  for _, o in ipairs(ORDERS) do
    local base = P .. K_IDX .. o .. ':'
    keys[#keys + 1] = base .. 'all'
    korder[#korder + 1] = o
    for _, t in ipairs(tags) do
      keys[#keys + 1] = base .. t
      korder[#korder + 1] = o
    end
    if o == 'load' then
      for k = 1, #keys do load[k] = keys[k] end
    end
  end
  i.keys, i.korder, i.load = keys, korder, load
  if POOL.ninfos >= 4096 then
    infos = {}
    POOL.infos, POOL.ninfos = infos, 0
  end
  infos[json] = i
  POOL.ninfos = POOL.ninfos + 1
  return i
end

local function avail(info, n)
  return info.ok and (info.max == nil or n < info.max)
end

-- ---------------------------------------------------------------- pending writes
-- Allocating is what costs Redis's Lua most (a table or string is a malloc, and
-- later garbage-collector work), so the per-call scratch space is made of
-- tables kept across calls and refilled (functions run one at a time).
--
-- Index writes: ZA[key] = {score, member, ...} (one ZADD) and ZR[key] =
-- {member, ...} (one ZREM), filled up to ZAN[key] / ZRN[key] since the last
-- flush; ZK lists the keys used. W.held[member] = n or false, W.pj[member] = new
-- JSON, W.g[member] = {lon, lat} or false (geo set): maps made when first used.
local ZA, ZAN, ZR, ZRN, ZSEEN, NZKEYS = {}, {}, {}, {}, {}, 0
local ZK, ZKN = {}, 0
local EPOCH = 0 -- bumped by every call and every flush that wrote: what ZSEEN and caches compare with
local W = { held = false, pj = false, g = false }

local function zkey(key)
  if ZSEEN[key] ~= EPOCH then
    if not ZA[key] then
      ZA[key], ZR[key] = {}, {}
      NZKEYS = NZKEYS + 1
    end
    ZSEEN[key] = EPOCH
    ZKN = ZKN + 1
    ZK[ZKN] = key
    ZAN[key], ZRN[key] = 0, 0
  end
end

local function za(key, score, member)
  if ZSEEN[key] ~= EPOCH then zkey(key) end
  local n, a = ZAN[key], ZA[key]
  a[n + 1], a[n + 2] = score, member
  ZAN[key] = n + 2
end

local function zr(key, member)
  if ZSEEN[key] ~= EPOCH then zkey(key) end
  local n = ZRN[key] + 1
  ZR[key][n] = member
  ZRN[key] = n
end

local function wmap(name)
  local t = W[name]
  if not t then
    t = {}
    W[name] = t
  end
  return t
end

-- Touched proxies: T[member] = state; TL[1..TLN] the same states in touch order
-- (state tables are reused across calls).
-- state = { seq = number, m = member string, j = JSON, info = info_of(j),
--           n = live leases now, n0 / av0 = count and availability in Redis }
local T, TL, TLN = {}, {}, 0
-- A lower bound of the touched proxies' load scores (NO_SCORE: none touched):
-- lowered by every touch and every count that goes down, made exact by the
-- acquire path when it looks at them all (see pick_fast()).
local NO_SCORE = 9007199254740992
local TLB = NO_SCORE

-- Lowers the bound to the load score of `st` as it is now.
local function bound(st)
  local sc = st.n * LOAD_SHIFT + st.seq
  if sc < TLB then TLB = sc end
end

-- The straight batch paths (STRAIGHT.release, STRAIGHT.cycle in
-- _lib_acquire.lua) and the helpers added since: one local for all, as the
-- chunk's 200 are spent.
local STRAIGHT = {}
-- The tokens of a release call, by position (release.lua fills it).
STRAIGHT.toks = {}

-- za() of member `m` with score `s` in each of `keys` (a proxy's load keys):
-- one Lua call a proxy instead of one a key (a call costs Redis more than
-- za()'s body).
function STRAIGHT.za_keys(keys, s, m)
  for k = 1, #keys do
    local key = keys[k]
    if ZSEEN[key] ~= EPOCH then zkey(key) end
    local n, a = ZAN[key], ZA[key]
    a[n + 1], a[n + 2] = s, m
    ZAN[key] = n + 2
  end
end

-- A record grace argument (ms, 0..MAX_GRACE_MS) in the form SET PX and PEXPIRE
-- take, its canonical decimal ('05' would be refused by Redis after the call
-- wrote its first commands), or false; remembered (a storage sends one).
STRAIGHT.graces, STRAIGHT.ngraces = {}, 0
function STRAIGHT.grace(s)
  local g = STRAIGHT.graces[s]
  if g ~= nil then return g end
  local n = int_in(s, 0, MAX_GRACE_MS)
  g = n ~= nil and fmt_int(n)
  if STRAIGHT.ngraces >= 64 then STRAIGHT.graces, STRAIGHT.ngraces = {}, 0 end
  STRAIGHT.graces[s], STRAIGHT.ngraces = g, STRAIGHT.ngraces + 1
  return g
end

-- The success order (pools that keep it, see src/success.rs): a proxy's
-- evidence in `P succ` is `<successes> <reports> <ms of the last report>`
-- (decayed sums, '%.17g'); its rank is the millionths its score
-- (successes + 1) / (reports + 2) falls short of 1 (never reported: 500000),
-- the same as src/success.rs's rank_of().
function STRAIGHT.rank_of(v)
  local s, n = string.match(v or '', '^(%S+) (%S+) ')
  s, n = tonumber(s), tonumber(n)
  if not s or not n then return 500000 end
  local r = math.floor((1 - (s + 1) / (n + 2)) * 1000000 + 0.5)
  if r ~= r or r < 0 then return 0 end
  if r > 1000000 then return 1000000 end
  return r
end

-- Counts a report into proxy `m`'s evidence in `P succ` at `now` (ms): the
-- sums so far weigh 0.5^(age / half-life), as src/success.rs's Evidence::after
-- (the same operations, so both storages keep the same doubles). `scoring` is
-- the meta's `succ` ('<half-life ms> <exploration millionths>', always written
-- with the order by pool_create.lua). HGET and HSET; returns the new evidence.
function STRAIGHT.score_report(m, success, now, scoring)
  local half = tonumber(string.match(scoring or '', '^(%d+) ')) or 1800000
  local key = P .. K_SUCC
  local s, n, t = string.match(redis.call('HGET', key, m) or '', '^(%S+) (%S+) (%d+)$')
  s, n, t = tonumber(s), tonumber(n), tonumber(t)
  if s and n and t then
    local w = 0.5 ^ (math.max(0, now - t) / half)
    s, n = s * w, n * w
  else
    s, n = 0, 0
  end
  if success then s = s + 1 end
  local v = string.format('%.17g %.17g %d', s, n + 1, now)
  redis.call('HSET', key, m, v)
  -- What succ_score() reads for this proxy until the call writes again.
  STRAIGHT.scored_m, STRAIGHT.scored_v, STRAIGHT.scored_epoch = m, v, EPOCH
  return v
end

-- A proxy's score in the success order, read from `P succ` (one HGET, none
-- for the proxy score_report() just counted): only when it enters the
-- indexes, or a report moved it.
function STRAIGHT.succ_score(st)
  local v
  if STRAIGHT.scored_m == st.m and STRAIGHT.scored_epoch == EPOCH then
    v = STRAIGHT.scored_v
  else
    v = redis.call('HGET', P .. K_SUCC, st.m)
  end
  return STRAIGHT.rank_of(v) * LOAD_SHIFT + st.seq
end

local function score(o, st)
  if o == 'load' then return st.n * LOAD_SHIFT + st.seq end
  if o == 'seq' then return st.seq end
  if o == 'succ' then return STRAIGHT.succ_score(st) end
  return st.info.latency * LOAD_SHIFT + st.seq
end

local function geo_add(info, m, seq)
  local lat, lon = info.p.lat, info.p.lon
  if math.abs(lat) <= GEO_MAX_LAT then wmap('g')[m] = { lon, lat } else za(P .. K_POLAR, seq, m) end
end

local function geo_remove(m)
  wmap('g')[m] = false
  zr(P .. K_POLAR, m)
end

-- Plans the writes that take a proxy from what Redis holds (n0, av0, and the
-- index entries of `old` info, or of st.info when its indexed fields did not
-- change) to its state now.
local function plan(st, old)
  local info, m = st.info, st.m
  local av1 = info ~= nil and avail(info, st.n)
  if old == nil then
    if st.av0 and info then
      if not av1 then
        local keys = info.keys
        for k = 1, #keys do zr(keys[k], m) end
        if info.geo then geo_remove(m) end
      elseif st.n ~= st.n0 then
        STRAIGHT.za_keys(info.load, score_text(st.n * LOAD_SHIFT + st.seq), m)
      end
    elseif av1 then
      local keys, korder = info.keys, info.korder
      for k = 1, #keys do za(keys[k], score(korder[k], st), m) end
      if info.geo then geo_add(info, m, st.seq) end
    end
  else
    if st.av0 then
      local kept = {}
      if av1 then
        for _, k in ipairs(info.keys) do kept[k] = true end
      end
      for _, k in ipairs(old.keys) do
        if not kept[k] then zr(k, m) end
      end
      if old.geo and not (av1 and info.geo) then geo_remove(m) end
    end
    if av1 then
      for k, key in ipairs(info.keys) do za(key, score(info.korder[k], st), m) end
      if info.geo then geo_add(info, m, st.seq) end
    end
  end
  -- The count lives in the score while available, else in `held`.
  local was = st.av0 and 0 or st.n0
  local is = (av1 or info == nil) and 0 or st.n
  if was ~= is then
    if is > 0 then wmap('held')[m] = is else wmap('held')[m] = false end
  end
  st.n0, st.av0, st.dirty = st.n, av1, false
end

-- A member longer than Redis's zset-max-listpack-value (64 bytes by default).
-- An index that gets it is converted to the skiplist encoding and stays so once
-- it is removed again: in a listpack every ZADD scans and moves the whole index
-- (callgrind, 1,000 proxies in 16 countries, c=64: 12 % of Redis's instructions
-- went to the per-country listpacks). It costs memory, about 80 bytes per entry
-- of an index under 128 entries (larger ones are skiplists anyway).
local SKIPLIST_MEMBER = '~ lighthouse: a member longer than zset-max-listpack-value makes this index a skiplist ~'

-- Sends every pending write: one command per key (and, when proxies' JSONs
-- changed, HINCRBY meta pver: see proxies_changed()). Index pages cached by the
-- acquire path are stale after it (EPOCH moves on). With `skiplist` (proxy_add),
-- every index written is made a skiplist (see SKIPLIST_MEMBER): one more ZREM each.
local function flush(skiplist)
  if TLN == 0 and ZKN == 0 and not (W.held or W.pj or W.g) then return end
  for i = 1, TLN do
    local st = TL[i]
    if st.dirty then plan(st) end
  end
  for i = 1, ZKN do
    local key = ZK[i]
    local n = ZRN[key]
    if n > 0 then redis.call('ZREM', key, unpack(ZR[key], 1, n)) end
  end
  for i = 1, ZKN do
    local key = ZK[i]
    local n = ZAN[key]
    if n > 0 then
      if skiplist then
        local a = ZA[key]
        a[n + 1], a[n + 2] = '+inf', SKIPLIST_MEMBER
        redis.call('ZADD', key, unpack(a, 1, n + 2))
        redis.call('ZREM', key, SKIPLIST_MEMBER)
      else
        redis.call('ZADD', key, unpack(ZA[key], 1, n))
      end
    end
  end
  ZKN = 0
  EPOCH = EPOCH + 1
  local held = W.held
  if held then
    local hs, hd = {}, {}
    for m, n in pairs(held) do
      if n then
        hs[#hs + 1] = m
        hs[#hs + 1] = n
      else
        hd[#hd + 1] = m
      end
    end
    if #hd > 0 then redis.call('HDEL', PK.held, unpack(hd)) end
    if #hs > 0 then redis.call('HSET', PK.held, unpack(hs)) end
    W.held = false
  end
  local pjs = W.pj
  if pjs then
    local pj = {}
    for m, j in pairs(pjs) do
      pj[#pj + 1] = m
      pj[#pj + 1] = j
    end
    redis.call('HSET', PK.proxies, unpack(pj))
    W.pj = false
    proxies_changed()
  end
  local gs = W.g
  if gs then
    local ga, gr = {}, {}
    for m, g in pairs(gs) do
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
    W.g = false
  end
end

-- A touched state for member `m` (a seq in decimal) whose JSON is `json` (nil:
-- no such proxy), with its count `n0` and availability `av0` as Redis holds them.
-- With `unbound`, the caller lowers the bound itself (see bound()).
local function touch(m, json, n0, av0, unbound)
  TLN = TLN + 1
  local st = TL[TLN]
  if not st then
    st = { seq = 0, m = '', j = false, n = 0, n0 = 0, av0 = false, dirty = false, info = false }
    TL[TLN] = st
  end
  st.seq, st.m, st.j, st.n, st.n0, st.av0, st.dirty = num(m), m, json, n0, n0, av0, false
  if json then st.info = info_of(json) else st.info = nil end
  T[m] = st
  if not unbound then bound(st) end
  return st
end

-- The states of these proxies (members: seq strings), read in three commands
-- whatever their number: the JSONs, their load-index scores, their held counts.
-- Proxies that no longer exist get a state with info = nil. With `leased` (each
-- holds a lease), a proxy that cannot be indexed then (full at max 1, or not
-- eligible) is looked up in `held` only.
-- Scratch arrays of load_states() (by position in `want`) and of
-- prepare_releases(), kept across calls: a table made per call grows by
-- doubling, a rehash each time (callgrind, c=64: about 10 per lease), and is
-- garbage after.
-- (One table of them: a Lua 5.1 chunk may have 200 locals, and the library's
-- helpers use most of them.)
local SCRATCH = { want = {}, js = {}, miss = {}, at = {}, scored = {}, si = {}, av = {},
  missing = {}, mi = {}, n = {}, pr_held = {}, pr_other = {}, pr_members = {}, pr_firsts = {},
  pr_gone = {}, pr_seen = {}, rb_seq = {}, rb_member = {}, rb_rec = {}, rb_rest = {},
  rb_score = {}, rb_info = {}, sb_m = {}, sb_s = {}, sb_j = {}, sb_n = {}, sb_info = {},
  sb_pick = {}, sb_taken = {} }

local function load_states(members, leased, count)
  local S = SCRATCH
  local want, nw = S.want, 0
  for k = 1, count or #members do
    local m = members[k]
    if not T[m] then
      nw = nw + 1
      want[nw] = m
    end
  end
  if nw == 0 then return end
  local js, miss, at, nmiss = S.js, S.miss, S.at, 0
  for i = 1, nw do
    local m = want[i]
    local j = known_json(m)
    js[i] = j or false
    if not j then
      nmiss = nmiss + 1
      miss[nmiss], at[nmiss] = m, i
    end
  end
  if nmiss > 0 then
    local got = redis.call('HMGET', PK.proxies, unpack(miss, 1, nmiss))
    for k = 1, nmiss do
      js[at[k]] = got[k]
      remember_json(miss[k], got[k])
    end
  end
  -- Each wanted proxy's count: its load score's high part, else its `held`
  -- field (absent = 0); LS_N[i] = the count, false until known.
  local cnt, scored, si, ns = S.n, S.scored, S.si, 0
  for i = 1, nw do
    cnt[i] = false
    local ok = true
    if leased then
      local j = js[i]
      local info = j and info_of(j)
      ok = info and info.ok and info.max ~= 1
    end
    if ok then
      ns = ns + 1
      scored[ns], si[ns] = want[i], i
    end
  end
  if ns > 0 then
    local got = redis.call('ZMSCORE', PK.load_all, unpack(scored, 1, ns))
    for k = 1, ns do
      local sc = got[k]
      if sc then cnt[si[k]] = math.floor(num(sc) / LOAD_SHIFT) end
    end
  end
  local missing, mi, nmi = S.missing, S.mi, 0
  for i = 1, nw do
    if not cnt[i] then
      nmi = nmi + 1
      missing[nmi], mi[nmi] = want[i], i
    end
  end
  local av = S.av
  for i = 1, nw do av[i] = cnt[i] and true or false end
  if nmi > 0 then
    local h = redis.call('HMGET', PK.held, unpack(missing, 1, nmi))
    for k = 1, nmi do cnt[mi[k]] = num(h[k]) or 0 end
  end
  for i = 1, nw do
    local m = want[i]
    if not T[m] then touch(m, js[i] or nil, cnt[i], av[i]) end
  end
end

-- The live set's size as this library counts it (per pool, kept across calls;
-- see finish() in _lib_acquire.lua): `k` members left it. At zero the set is
-- gone (Redis deletes an empty key), and a new one starts as a listpack.
local function live_gone(k)
  if not POOL then return end
  local est = (POOL.live_est or 0) - k
  if est <= 0 then est, POOL.live_sl = 0, false end
  POOL.live_est = est
end

-- Gives one slot back to proxy `m` (a state loaded by load_states). Returns
-- whether a slot was freed (false when the proxy is gone or counted nothing).
local function give_back(m)
  local st = T[m]
  if not st or not st.info or st.n <= 0 then return false end
  st.n = st.n - 1
  st.dirty = true
  bound(st)
  return true
end

-- A record whose lease left the live set without being released (reclaimed,
-- released expired, of a removed proxy) as it is, but kept only `grace` ms (a
-- string) from now: live, a record has no TTL (see grant() in _lib_acquire.lua).
function STRAIGHT.expire_record(key, grace)
  if grace ~= '0' then redis.call('PEXPIRE', key, grace) else redis.call('DEL', key) end
end

-- Expires up to `limit` live leases whose time has come (their records stay as
-- they are, an active record past its expiry reads as expired, for `grace` ms, a
-- string). Returns how many gave a slot back, whether more are due, and the
-- earliest expiry left (or nil).
-- The straight part of reclaim() (its writes wait in the buffers flush() sends,
-- so its callers, cleanup.lua and reclaim_due() in _lib_acquire.lua, flush
-- before anything reads the indexes): the proxies of `seqs` (`cnt[seq]` due
-- leases each) that no earlier part of the call touched, whose JSON the library
-- remembers and that are in the indexes with at least that many leases counted get their load scores lowered directly,
-- one ZMSCORE for all and the ZADDs flush() sends, instead of a proxy state
-- each (load_states/touch/plan: ~250 Lua steps a proxy). Returns the slots
-- given back and the seqs left for the general way (in `rest`, `nr` of them).
function STRAIGHT.reclaim_indexed(seqs, cnt, rest)
  local nr, n = 0, 0
  if #seqs == 0 then return 0, 0 end -- no member named a proxy (edited by hand)
  local sc = redis.call('ZMSCORE', PK.load_all, unpack(seqs))
  for i = 1, #seqs do
    local m = seqs[i]
    local j = sc[i] and not T[m] and known_json(m)
    local info = j and info_of(j)
    local k = cnt[m]
    local cur = info and info.ok and info.max ~= 1 and num(sc[i])
    if cur and cur >= k * LOAD_SHIFT then
      STRAIGHT.za_keys(info.load, score_text(cur - k * LOAD_SHIFT), m)
      n = n + k
    else
      nr = nr + 1
      rest[nr] = m
    end
  end
  return n, nr
end

-- Expires up to `limit` live leases whose time has come (their records stay as
-- they are, an active record past its expiry reads as expired, for `grace` ms, a
-- string). Returns how many gave a slot back, whether more are due, and the
-- earliest expiry left (or nil). The caller flushes before it reads an index
-- (see STRAIGHT.reclaim_indexed).
local function reclaim(now, limit, grace)
  local live = PK.live
  local due = redis.call('ZRANGEBYSCORE', live, '-inf', now, 'LIMIT', 0, limit)
  if #due == 0 then
    local first = redis.call('ZRANGE', live, 0, 0, 'WITHSCORES')
    return 0, false, num(first[2])
  end
  local seqs, cnt, of, toks = {}, {}, {}, {}
  for i, member in ipairs(due) do
    -- One anchored match for both parts (an unanchored ':(%d+)$' tries
    -- every position of the member: callgrind, ~1,600 instructions a lease).
    local s, tok = string.match(member, '^(%d+):(%d+)$')
    of[i], toks[i] = s, tok
    if s then
      local c = cnt[s]
      if c then
        cnt[s] = c + 1
      else
        cnt[s] = 1
        seqs[#seqs + 1] = s
      end
    end
  end
  -- Proxies in the indexes straight; the others through their states (a
  -- proxy without one, given back straight, gives nothing back here).
  local rest = {}
  local n, nr = STRAIGHT.reclaim_indexed(seqs, cnt, rest)
  if nr > 0 then
    load_states(rest, true, nr)
    for i = 1, #due do
      if of[i] and give_back(of[i]) then n = n + 1 end
    end
  end
  live_gone(redis.call('ZREM', live, unpack(due)))
  for i = 1, #due do
    local tok = toks[i]
    if tok then STRAIGHT.expire_record(P .. tok, grace) end
  end
  local more = #due >= limit and redis.call('ZCOUNT', live, '-inf', now) > 0
  local first = redis.call('ZRANGE', live, 0, 0, 'WITHSCORES')
  return n, more, num(first[2])
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
-- again. A member of `P cooldown` is scored by the later of its failure
-- cooldown's end (`cool`) and its rate-limit rest's end (`rest`): both are over
-- when it is due. Returns how many, and the earliest end left (or nil).
local function lift_cooldowns(now, limit)
  local key = P .. K_COOLDOWN
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 then
    load_states(due)
    for _, m in ipairs(due) do
      local st = T[m]
      if st and st.info and (st.info.p.cool ~= nil or st.info.p.rest ~= nil) then
        local p = {}
        for k, v in pairs(st.info.p) do p[k] = v end
        st.j = json_set(json_set(st.j, p, 'cool', nil), p, 'rest', nil)
        wmap('pj')[m] = st.j
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
-- Releases of this call, by position (REL[1..RELN], items reused across calls):
-- prepared (records read, proxies loaded, live members taken out) all at once,
-- then applied one by one, so that rotate.lua can interleave them with its
-- acquires in arrival order. DONE: outcomes by token, for a lease named twice.
local REL, RELN, DONE = {}, 0, {}

-- Starts a call: its keys and arguments, and empty per-call state.
local function reset(keys, args)
  if not BOUND then bind() end
  KEYS, ARGV, P = keys, args, nil
  for i = 1, TLN do T[TL[i].m] = nil end
  TLN, TLB = 0, NO_SCORE
  for i = 1, RELN do DONE[REL[i].id] = nil end
  RELN = 0
  ZKN = 0
  EPOCH = EPOCH + 1
  if NZKEYS > 4096 then
    ZA, ZAN, ZR, ZRN, ZSEEN, NZKEYS = {}, {}, {}, {}, {}, 0
  end
  W.held, W.pj, W.g = false, false, false
  POOL, SEQS = nil, nil
end

-- Reads the records of these leases (tokens with their record keys `P <token>`)
-- in one command, takes the live ones out of the live set (one command each
-- way), remembering which were there, and loads their proxies: those of leases
-- that were live hold a slot each (load_states' `leased`); the others (released,
-- or expired and reclaimed) may hold none, so they are read in full. A token
-- older than the pool (`created`, its µs in decimal: the pool was removed and
-- created again) is not found; tokens and `created` are compared as decimal
-- strings (no leading zeros in either), which saves a strtod per lease.
-- Its scratch arrays are SCRATCH.pr_* (see load_states()).

local function prepare_releases(tokens, keys, created)
  local recs
  if #keys == 1 then recs = { redis.call('GET', keys[1]) } else recs = redis.call('MGET', unpack(keys)) end
  local S = SCRATCH
  local seen, members, firsts = S.pr_seen, S.pr_members, S.pr_firsts
  local nseqs, nm = 0, 0
  for i, tok in ipairs(tokens) do
    local item = REL[i]
    if not item then
      item = { id = '', key = '', dup = false, r = false, present = false, rec = {} }
      REL[i] = item
    end
    item.id, item.key, item.dup, item.r, item.present = tok, keys[i], false, false, false
    RELN = i
    if seen[tok] then
      item.dup = true
    elseif #tok > #created or (#tok == #created and tok >= created) then
      seen[tok] = true
      local r = parse_record(recs[i] or nil, item.rec)
      if r then
        item.r = r
        nseqs = nseqs + 1
        if r.state == 'active' then
          r.member = r.seq .. ':' .. tok
          nm = nm + 1
          members[nm], firsts[nm] = r.member, item
        end
      end
    end
  end
  for i = 1, RELN do seen[REL[i].id] = nil end
  local live = PK.live
  if nm == 1 then
    firsts[1].present = redis.call('ZREM', live, members[1]) == 1
    if firsts[1].present then live_gone(1) end
  elseif nm > 1 then
    local sc = redis.call('ZMSCORE', live, unpack(members, 1, nm))
    local gone, ng = S.pr_gone, 0
    for k = 1, nm do
      if sc[k] then
        firsts[k].present = true
        ng = ng + 1
        gone[ng] = members[k]
      end
    end
    if ng > 0 then live_gone(redis.call('ZREM', live, unpack(gone, 1, ng))) end
  end
  if nseqs == 0 then return end
  local held, other, nh, no = S.pr_held, S.pr_other, 0, 0
  for i = 1, RELN do
    local item = REL[i]
    if item.r then
      if item.present then
        nh = nh + 1
        held[nh] = item.r.seq
      else
        no = no + 1
        other[no] = item.r.seq
      end
    end
  end
  if nh > 0 then load_states(held, true, nh) end
  if no > 0 then load_states(other, false, no) end
end

-- The outcome of releasing lease record `r` (at `key`, of a proxy that still
-- exists; `present`: it was in the live set), and its record once released:
-- kept `grace` ms (a string) after now (`now_s`), or deleted at once.
local function end_record(r, key, present, now, now_s, grace)
  if r.state == 'released' then return 'already_released' end
  if num(r.at) + num(r.dur) <= now then
    if present then STRAIGHT.expire_record(key, grace) end
    return 'expired'
  end
  if not present then return 'not_found' end
  if grace ~= '0' then
    redis.call('SET', key, 'released ' .. r.seq .. ' ' .. r.at .. ' ' .. r.dur .. ' ' .. now_s .. ' '
      .. r.rest, 'PX', grace, 'GET')
  else
    redis.call('DEL', key)
  end
  return 'released'
end

-- Applies prepared release i: its outcome (released | already_released |
-- expired | not_found) and whether it freed a slot. A live lease gives its slot
-- back exactly once; a released record is kept for `grace` ms (a string) after
-- now (`now_s`: now in ms as a string).
local function apply_release(i, now, now_s, grace)
  local item = REL[i]
  if item.dup then
    local o = DONE[item.id] or 'not_found'
    if o == 'released' then o = 'already_released' end
    return o, false
  end
  local r, o, freed = item.r, 'not_found', false
  if r then
    local st = T[r.seq]
    if st and st.info then
      o = end_record(r, item.key, item.present, now, now_s, grace)
    elseif item.present then
      STRAIGHT.expire_record(item.key, grace) -- a lease of a removed proxy
    end
    if item.present then freed = give_back(r.seq) end
  end
  DONE[item.id] = o
  return o, freed
end

-- n leases given back in one call, the common batch, straight: every record
-- active, not expired and of this pool, no token twice, every lease in the
-- live set, every proxy indexed (its count in its load score) with a JSON the
-- library remembers. The same outcomes ('released' each) and writes as
-- prepare_releases(), apply_release() and flush(), without touched states:
-- reads (MGET records, ZMSCORE live, ZMSCORE load:all), then ZREM live once,
-- SET per record, one ZADD per load key. Returns the reply, or nil, having
-- written nothing, to leave the call to them. Leases `KEYS[3..n+2]` with
-- tokens `ARGV[3..n+2]`.

-- The cooldown after the `fails`-th failure in a row, ms: max(1, floor(min(cap,
-- base * 2^(fails-1)) * keep / 10^6)), CooldownPolicy::delay_ms in
-- src/cooldown.rs, the one definition (exact here: every product is an integer
-- below 2^53). report.lua and site_report.lua use it.
function STRAIGHT.cooldown_ms(fails, base, cap, keep)
  local full = math.min(cap, base * 2 ^ math.min(fails - 1, 40))
  return math.max(1, math.floor(full * keep / 1000000))
end

-- The report of report.lua and site_report.lua, ARGV[2..8]: proxy id, 'success'
-- or 'failure', base and cap ms, millionths of the cooldown kept, failures in a
-- row that ban (0: never), the failure's reason. Returns them, or nil and the
-- error message (nothing is written before).
function STRAIGHT.report_args()
  local id, mode = ARGV[2], ARGV[3]
  if not is_uuid(id) then return nil, 'bad proxy id' end
  if mode ~= 'success' and mode ~= 'failure' then return nil, 'bad mode' end
  local base = int_in(ARGV[4], 1, MAX_LEASE_MS)
  local cap = int_in(ARGV[5], 1, MAX_LEASE_MS)
  local keep = int_in(ARGV[6], 0, 1000000)
  local ban_after = int_in(ARGV[7], 0, MAX_U32)
  if not base or not cap or cap < base or not keep or not ban_after then
    return nil, 'bad numeric argument'
  end
  local reason = ARGV[8]
  if type(reason) ~= 'string' or #reason > 256 or string.find(reason, '%c') then
    return nil, 'bad reason'
  end
  return { id = id, mode = mode, base = base, cap = cap, keep = keep, ban_after = ban_after,
    reason = reason }
end

-- Whether `key` is a site's key of the pool of prefix `prefix` (`P site:<site>`).
function STRAIGHT.site_key_ok(prefix, key)
  local site = prefix .. K_SITE
  return string.sub(key, 1, #site) == site and #key > #site
end

-- A site's state (`P site:<site>`, see site_report.lua) for the proxies `ms`:
-- blocked[i] is true when proxy ms[i] rests (until after now) or is banned for
-- the site. A hash of an earlier pool of this name blocks nothing. One HMGET.
STRAIGHT.blocked = {}
function STRAIGHT.site_blocked(key, ms, pool_id, now)
  local got = redis.call('HMGET', key, 'pool', unpack(ms))
  local b = STRAIGHT.blocked
  for i = 1, #ms do b[i] = false end
  for i = #ms + 1, #b do b[i] = nil end
  if got[1] ~= pool_id then return b end
  for i = 1, #ms do
    local v = got[i + 1]
    if v then
      local _, until_ms = string.match(v, '^(%d+) (%S+)')
      b[i] = until_ms == 'ban' or (tonumber(until_ms) or 0) > now
    end
  end
  return b
end
-- The tokens of the record keys KEYS[3..n+2] (release.lua, cycle.lua): each
-- key of the pool `prefix`, its token what follows the prefix, into
-- STRAIGHT.toks; false when a key is not of the pool.
function STRAIGHT.key_tokens(prefix, n)
  local toks, plen = STRAIGHT.toks, #prefix
  for i = 1, n do
    local key = KEYS[2 + i]
    if string.find(key, prefix, 1, true) ~= 1 then return false end
    toks[i] = string.sub(key, plen + 1)
  end
  return toks
end

-- The leases of tokens STRAIGHT.toks[1..n] (records KEYS[3..n+2], or
-- rkeys[1..n] when given: rotate.lua's, built from its tokens) as the
-- straight release ways take them (STRAIGHT.release, STRAIGHT.cycle): each
-- an active record, of a token not older than the pool (`created`), live and
-- not expired at `now_s`. Fills SCRATCH.rb_seq, rb_member (live-set member),
-- rb_rec (record) and rb_rest (where its <rest> starts) and returns true, or
-- returns nil (the general way answers them).
function STRAIGHT.read_releases(n, created, now_s, rkeys)
  local S, toks = SCRATCH, STRAIGHT.toks
  local seqs, members, recs, rests = S.rb_seq, S.rb_member, S.rb_rec, S.rb_rest
  local got
  if rkeys then
    got = redis.call('MGET', unpack(rkeys, 1, n))
  else
    got = redis.call('MGET', unpack(KEYS, 3, n + 2))
  end
  for i = 1, n do
    local tok, v = toks[i], got[i]
    if not v or not (#tok > #created or (#tok == #created and tok >= created)) then return nil end
    -- `active <seq> <at> <dur> <rest>`, read by plain finds (a pattern costs
    -- Redis ~3,000 instructions here): the seq, and where <rest> starts. An
    -- odd record finds no member in the live set, and goes the general way.
    if string.byte(v, 1) ~= 97 then return nil end -- 'a'ctive, not 'r'eleased
    local e1 = string.find(v, ' ', 8, true)
    local e3 = e1 and string.find(v, ' ', e1 + 1, true)
    e3 = e3 and string.find(v, ' ', e3 + 1, true)
    if not e3 then return nil end
    local seq = string.sub(v, 8, e1 - 1)
    seqs[i], members[i], recs[i], rests[i] = seq, seq .. ':' .. tok, v, e3 + 1
  end
  -- Each live and not yet expired: its live score (its expiry, ms, as Redis
  -- writes it: the digits of an integer) above now, compared as decimal
  -- strings of the same length (no strtod).
  local live = redis.call('ZMSCORE', PK.live, unpack(members, 1, n))
  for i = 1, n do
    local e = live[i]
    if not e or #e ~= #now_s or e <= now_s then return nil end
  end
  return true
end

-- Writes at `key` the released form of active record `v` (its <rest> starting
-- at `b`), kept `grace` ms (a string; '0': deleted) from `now_s`:
-- `active <seq> <at> <dur> <rest>` -> `released <seq> <at> <dur> <now> <rest>`.
function STRAIGHT.write_released(key, v, b, grace, now_s)
  if grace ~= '0' then
    redis.call('SET', key, 'released' .. string.sub(v, 7, b - 1) .. now_s .. ' ' .. string.sub(v, b),
      'PX', grace, 'GET')
  else
    redis.call('DEL', key)
  end
end

-- The tokens STRAIGHT.toks[1..n] and their record keys KEYS[3..n+2] as the
-- general release way takes them (prepare_releases), or nil when a token is
-- not digits (release.lua, cycle.lua).
function STRAIGHT.release_keys(n)
  local toks, ids, keys = STRAIGHT.toks, {}, {}
  for i = 1, n do
    if not is_token(toks[i]) then return nil end
    ids[i], keys[i] = toks[i], KEYS[2 + i]
  end
  return ids, keys
end

function STRAIGHT.release(n, created, now_s, grace)
  if not STRAIGHT.read_releases(n, created, now_s) then return nil end
  local S = SCRATCH
  local seqs, members, scores, infos = S.rb_seq, S.rb_member, S.rb_score, S.rb_info
  local sc = redis.call('ZMSCORE', PK.load_all, unpack(seqs, 1, n))
  -- The new scores, a lease at a time (a proxy may come twice): scores[m] is
  -- its score now; a token twice is a lease twice in the live set's answer,
  -- found by its member (set to false once seen).
  local ok = true
  for i = 1, n do
    local m = seqs[i]
    -- known_json(), info_of() and num() inlined where they answer from
    -- their caches (a Lua call costs Redis more than the look-up).
    local j = sc[i] and SEQS and SEQS[m]
    local info = j and (POOL.infos[j] or info_of(j))
    local cur = scores[m] or (sc[i] and (NUM[sc[i]] or num(sc[i])))
    if not info or not info.ok or not cur or cur < LOAD_SHIFT or scores[members[i]] == false then
      ok = false
      break
    end
    scores[m] = cur - LOAD_SHIFT
    scores[members[i]] = false
    infos[i] = info
  end
  if not ok then
    for i = 1, n do scores[seqs[i]], scores[members[i]] = nil, nil end
    return nil
  end
  live_gone(redis.call('ZREM', PK.live, unpack(members, 1, n)))
  for i = 1, n do
    STRAIGHT.write_released(KEYS[2 + i], S.rb_rec[i], S.rb_rest[i], grace, now_s)
    local m = seqs[i]
    local s = scores[m]
    if s then
      STRAIGHT.za_keys(infos[i].load, SCS[s] or score_text(s), m)
      scores[m] = nil
    end
    scores[members[i]] = nil
  end
  flush()
  return 'released' -- every one
end

-- One lease given back, the most common release call: the same outcome and
-- writes as prepare_releases(), apply_release() and flush(), without their
-- tables, in the common case straight (a live lease of an indexed proxy: its
-- index scores go down by one); any other case goes through touch(),
-- give_back() and flush(). Returns the outcome and whether a slot was freed.
-- `read`: the record as the caller already read it (false: none), or nil.
local function release_one(id, key, created, now, now_s, grace, read)
  if not (#id > #created or (#id == #created and id >= created)) then return 'not_found', false end
  if read == nil then read = redis.call('GET', key) end
  local r = parse_record(read)
  if not r then return 'not_found', false end
  local m = r.seq
  local present = false
  if r.state == 'active' then
    present = redis.call('ZREM', PK.live, m .. ':' .. id) == 1
    if present then live_gone(1) end
  end
  local json = known_json(m)
  if not json then
    json = redis.call('HGET', PK.proxies, m)
    remember_json(m, json or nil)
  end
  if not json then
    if present then STRAIGHT.expire_record(key, grace) end -- a lease of a removed proxy
    return 'not_found', false
  end
  local info = info_of(json)
  local o = end_record(r, key, present, now, now_s, grace)
  if not present then return o, false end
  -- Its slot back: the count is the load score's high part while indexed. One
  -- ZADD XX INCR lowers it in `load:all` and answers the new score (nil when
  -- the proxy is not indexed: nothing written), a ZSCORE and a ZADD in one; the
  -- proxy's other load keys get that score as Redis wrote it.
  local n0, got
  if info.ok and info.max ~= 1 then
    got = redis.call('ZADD', PK.load_all, 'XX', 'INCR', NEG_SHIFT, m)
    if got then n0 = math.floor(num(got) / LOAD_SHIFT) + 1 end
  end
  if n0 and n0 <= 0 then
    -- It counted nothing (a count edited by hand): put the score back.
    redis.call('ZADD', PK.load_all, score_text(num(got) + LOAD_SHIFT), m)
    return o, false
  end
  if n0 and (info.max == nil or n0 - 1 < info.max) then
    local keys = info.load
    for k = 2, #keys do redis.call('ZADD', keys[k], got, m) end
    return o, true
  end
  if n0 then
    touch(m, json, n0, true) -- indexed, yet over its limit (a count edited by hand)
  else
    touch(m, json, num(redis.call('HGET', PK.held, m)) or 0, false)
  end
  local freed = give_back(m)
  flush()
  return o, freed
end
