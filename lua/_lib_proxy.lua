-- _lib_proxy.lua: what the scripts that write proxies share (joined after
-- _lib.lua to proxy_add, proxy_update, proxy_status, proxy_remove, report and
-- audit only, so the hot scripts do not define it on every call).
--
-- A proxy is one JSON object in P proxies (field: its seq), with short keys and
-- defaults left out: id, host, port, proto (absent: http), user, pass, status
-- (absent: active), max (absent: unlimited), source, country, city, isp, asn, lat,
-- lon, checked (RFC 3339), latency (ms), fails (failures in a row), cool
-- (cooldown end ms), failure (last failure reason).

local PROXY_PROTO = { http = true, https = true, socks4 = true, socks5 = true }
local PROXY_STATUS = { active = true, inactive = true, slow = true, banned = true }

local function uint(v, hi)
  return type(v) == 'number' and v >= 0 and v <= hi and v % 1 == 0
end

local function num_in(v, lo, hi)
  return type(v) == 'number' and v == v and v >= lo and v <= hi
end

-- Checks a proxy JSON as the client writes it (`mutable`: the fields only the
-- scripts write may be present too). Returns the decoded table, or nil and why.
local function check_proxy_json(json, mutable)
  if type(json) ~= 'string' or #json > 8192 then return nil, 'bad proxy JSON' end
  local ok, p = pcall(cjson.decode, json)
  if not ok or type(p) ~= 'table' then return nil, 'bad proxy JSON' end
  local allowed = {
    id = true, host = true, port = true, proto = true, user = true, pass = true, status = true,
    max = true, source = true, country = true, city = true, isp = true, asn = true, lat = true,
    lon = true, checked = true,
  }
  if mutable then
    allowed.latency, allowed.fails, allowed.cool, allowed.failure = true, true, true, true
  end
  for k, _ in pairs(p) do
    if not allowed[k] then return nil, 'unknown proxy field ' .. tostring(k) end
  end
  if not is_uuid(p.id) then return nil, 'bad proxy id' end
  if not is_text(p.host, 255) or string.find(p.host, '%s') then return nil, 'bad host' end
  if not uint(p.port, 65535) or p.port < 1 then return nil, 'bad port' end
  if p.proto ~= nil and (not PROXY_PROTO[p.proto] or p.proto == 'http') then return nil, 'bad protocol' end
  if p.status ~= nil and (not PROXY_STATUS[p.status] or p.status == 'active') then return nil, 'bad status' end
  if p.max ~= nil and (not uint(p.max, MAX_U32) or p.max < 1) then return nil, 'bad max_concurrency' end
  if p.user ~= nil and not is_text(p.user, 256) then return nil, 'bad username' end
  if p.pass ~= nil and (type(p.pass) ~= 'string' or #p.pass > 256) then return nil, 'bad password' end
  if (p.user == nil) ~= (p.pass == nil) then return nil, 'username without password' end
  for _, k in ipairs({ 'source', 'country', 'city', 'isp' }) do
    if p[k] ~= nil and not is_text(p[k], 256) then return nil, 'bad ' .. k end
  end
  if p.asn ~= nil and not uint(p.asn, MAX_U32) then return nil, 'bad asn' end
  if (p.lat == nil) ~= (p.lon == nil) then return nil, 'latitude without longitude' end
  if p.lat ~= nil and (not num_in(p.lat, -90, 90) or not num_in(p.lon, -180, 180)) then
    return nil, 'bad location'
  end
  if p.checked ~= nil and not is_text(p.checked, 64) then return nil, 'bad checked_at' end
  if p.latency ~= nil and not uint(p.latency, MAX_U32) then return nil, 'bad latency' end
  if p.fails ~= nil and not uint(p.fails, MAX_U32) then return nil, 'bad failure count' end
  if p.cool ~= nil and not uint(p.cool, 9007199254740991) then return nil, 'bad cooldown' end
  if p.rest ~= nil and not uint(p.rest, 9007199254740991) then return nil, 'bad rest' end
  if p.failure ~= nil and (type(p.failure) ~= 'string' or #p.failure > 256) then
    return nil, 'bad failure reason'
  end
  return p
end

-- The ids shard of a proxy id: P ids:<first two hex digits>.
local function ids_key(id)
  return P .. K_IDS .. string.lower(string.sub(id, 1, 2))
end

-- The seq (member string) of a proxy id in this pool, or nil.
local function seq_of(id)
  local s = redis.call('HGET', ids_key(id), id)
  if s then return s end
  return nil
end

-- Loads proxy `m`'s state and replaces its JSON with `json` (already checked):
-- the indexes, `held` and the meta counters follow (`counters`: the meta's
-- `active` and `banned`, moved here for the caller to write). Returns the state.
local function rewrite(m, json, counters)
  load_states({ m })
  local st = T[m]
  local old = st.info
  local was_active = old and (old.p.status == nil or old.p.status == 'active')
  local was_banned = old and old.p.status == 'banned'
  st.j = json
  st.info = info_of(json)
  wmap('pj')[m] = json
  plan(st, old)
  local is_active = st.info.p.status == nil or st.info.p.status == 'active'
  local is_banned = st.info.p.status == 'banned'
  if counters then
    if was_active ~= is_active then
      counters.active = counters.active + (is_active and 1 or -1)
    end
    if was_banned ~= is_banned then
      counters.banned = counters.banned + (is_banned and 1 or -1)
    end
  end
  return st
end

-- The meta counters `active` and `banned` as read (HMGET values, absent = 0),
-- for rewrite().
local function read_counters(active, banned)
  return { active = tonumber(active or '0') or 0, banned = tonumber(banned or '0') or 0 }
end

-- The HSET arguments that write the meta counters back (never below 0: a pool
-- created before `banned` was counted has none, and may un-ban a proxy it did
-- not count).
local function counter_fields(counters)
  return 'active', fmt_int(math.max(0, counters.active)), 'banned',
    fmt_int(math.max(0, counters.banned))
end

-- `{'OK', json, live leases}` of a proxy state.
local function proxy_reply(st)
  return { 'OK', st.j, st.n, st.seq }
end

-- Adds the declared tags of these infos to P tags (pool removal finds the
-- index keys there).
local function remember_tags(infos)
  local tags, seen = {}, {}
  for _, info in ipairs(infos) do
    for _, t in ipairs(info.tags) do
      if not seen[t] then
        seen[t] = true
        tags[#tags + 1] = t
      end
    end
  end
  if #tags > 0 then redis.call('SADD', P .. K_TAGS, unpack(tags)) end
end
