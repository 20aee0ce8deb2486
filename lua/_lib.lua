-- _lib.lua: helpers shared by every lighthouse-lease script.
--
-- This file is not a script of its own: src/redis/scripts.rs prepends it, at
-- compile time, to each operation's file (concat! of include_str!), so every
-- script carries the same helpers. Keep it small: Lua defines every helper on
-- every call (helpers only the proxy-writing scripts need are in _lib_proxy.lua). Nothing here reads input or writes state by
-- itself.
--
-- Key layout (src/redis/keys.rs is the reference; the scripts only append these
-- suffixes to the pool prefix `<ns>:{<pool>}:` they receive and check):
--   meta                 hash   pool id, name, description, counters, cursors, fence,
--                               cool_next (earliest cooldown end ms: a hint, early at worst)
--   proxies              zset   every proxy id, scored by insertion sequence
--   leases               zset   live leases `<lease-id>:<proxy-seq>`, scored by expiry ms
--   cooldown             zset   proxies cooling down after a failure, by cooldown end ms
--   holders              zset   the same live leases `<lease-id>`, scored by proxy sequence
--                               (ZCOUNT holders s s = a proxy's live leases, for audits)
--   tags                 set    every index tag ever used in the pool
--   active               set    proxies whose status is active (stats)
--   leased               set    proxies with at least one live lease (stats)
--   proxy:<id>           hash   one proxy
--   lease:<id>           hash   one lease record (TTL expiry + grace)
--   avail:seq:<tag>      zset   available proxies of an index, by insertion sequence
--   avail:load:<tag>     zset   same members, by leases * 2^32 + sequence
--   avail:lat:<tag>      zset   same members, by latency ms * 2^32 + sequence
--   avail:geo            geo    available proxies with a location (|lat| <= 85.05112878)
--   avail:polar          zset   available proxies with a location outside GEO's range
-- `<tag>` is `all` or `<attribute>=<percent-encoded value>`.

local LOAD_SHIFT = 4294967296 -- 2^32: load score = leases * 2^32 + seq
local GEO_MAX_LAT = 85.05112878
local EARTH_RADIUS_KM = 6371.0088
local MAX_U32 = 4294967295

-- Redis time in ms, read once per script.
-- Redis time read once: milliseconds and microseconds since the epoch.
local function now_clock()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return math.floor(us / 1000), us
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fail(msg)
  return redis.error_reply('ERR lighthouse: ' .. msg)
end

-- An integer (every time in ms or µs, count, sequence and token here is one,
-- below 2^53) in decimal. string.format('%d') is about 3x cheaper than tostring,
-- which goes through '%.14g'.
local function fmt_int(n)
  return string.format('%d', n)
end

-- A float with enough digits to read back the same double.
local function fmt_num(x)
  return string.format('%.17g', x)
end

-- 8-4-4-4-12 hex digits: the length, the dash positions, then one anchored
-- pattern of hex runs (cheaper than a character-class scan plus a dash count).
local function is_uuid(s)
  return type(s) == 'string' and #s == 36 and string.byte(s, 9) == 45
    and string.byte(s, 14) == 45 and string.byte(s, 19) == 45 and string.byte(s, 24) == 45
    and string.find(s, '^%x+%-%x+%-%x+%-%x+%-%x+$') ~= nil
end

-- The shape of an id the client made (a UUID): 36 bytes, dashes where a UUID has
-- them, and no ':' (the separator of `leases` members). Enough to keep keys and
-- members unambiguous, and several times cheaper than is_uuid's pattern: the hot
-- scripts (acquire, release) use it for the ids they get on every call.
local function is_id(s)
  return type(s) == 'string' and #s == 36 and string.byte(s, 9) == 45
    and string.byte(s, 14) == 45 and string.byte(s, 19) == 45 and string.byte(s, 24) == 45
    and not string.find(s, ':', 1, true)
end

-- An integer in [lo, hi], or nil. (tonumber also reads forms such as '1e3' or
-- '0x10'; they are the same integers, so they are accepted.)
local function int_in(s, lo, hi)
  if type(s) ~= 'string' then
    return nil
  end
  local n = tonumber(s)
  if n == nil or n < lo or n > hi or n % 1 ~= 0 then
    return nil
  end
  return n
end

-- A finite number in [lo, hi], or nil.
local function num_in(s, lo, hi)
  if type(s) ~= 'string' or #s > 64 then
    return nil
  end
  local n = tonumber(s)
  if n == nil or n ~= n or n < lo or n > hi then
    return nil
  end
  return n
end

-- Printable text of 1..max bytes without control characters.
local function is_text(s, max)
  return type(s) == 'string' and #s >= 1 and #s <= max and not string.find(s, '%c')
end

local function is_tag(s)
  return type(s) == 'string' and #s <= 1024
    and (s == 'all' or string.match(s, '^[a-z]+=[A-Za-z0-9._%%%-]+$') ~= nil)
end

-- Checks the pool prefix `<ns>:{<pool>}:` against the keys it must have built.
local function check_prefix(prefix, key, suffix)
  return type(prefix) == 'string' and #prefix >= 5 and #prefix <= 200
    and string.sub(prefix, -1) == ':' and key == prefix .. suffix
end

local PROXY_STATUS = { active = true, inactive = true, slow = true, banned = true }

-- What the counters and indexes need to know about a proxy: the first 7 values
-- of `HMGET <proxy> unpack(SNAPSHOT_FIELDS)`.
local SNAPSHOT_FIELDS = { 'status', 'max_concurrency', 'current_leases', 'seq', 'tags',
  'latitude', 'longitude', 'cooldown_until_ms', 'latency_ms' }

local function snapshot_of(v)
  if not v[4] then
    return nil
  end
  local s = {
    status = v[1],
    max = tonumber(v[2] or ''),
    leases = tonumber(v[3] or '0') or 0,
    seq = tonumber(v[4]),
    tags = v[5] or '',
    lat = v[6] or nil,
    lon = v[7] or nil,
    cooling = v[8] and true or false,
    latency = tonumber(v[9] or ''),
  }
  s.active = s.status == 'active'
  s.available = s.active and not s.cooling and (s.max == nil or s.leases < s.max)
  return s
end

local function snapshot(prefix, id)
  return snapshot_of(redis.call('HMGET', prefix .. 'proxy:' .. id, unpack(SNAPSHOT_FIELDS)))
end

local function with_leases(s, leases)
  return {
    status = s.status, max = s.max, leases = leases, seq = s.seq, tags = s.tags,
    lat = s.lat, lon = s.lon, active = s.active, cooling = s.cooling, latency = s.latency,
    available = s.active and not s.cooling and (s.max == nil or leases < s.max),
  }
end

-- The same proxy state with its cooldown on or off.
local function with_cooling(s, cooling)
  local t = with_leases(s, s.leases)
  t.cooling = cooling
  t.available = t.active and not cooling and (t.max == nil or t.leases < t.max)
  return t
end

local function each_tag(tags, f)
  f('all')
  for tag in string.gmatch(tags, '%S+') do f(tag) end
end

-- A number: redis.call sends integers below 2^53 exactly.
local function load_score(s)
  return s.leases * LOAD_SHIFT + s.seq
end

-- Lowest-latency order: latency ms (capped at 2^20 - 1; never measured = 2^20,
-- last) * 2^32 + seq, below 2^53.
local LATENCY_UNKNOWN = 1048576
local function latency_score(s)
  local l = s.latency
  if l == nil then l = LATENCY_UNKNOWN else l = math.min(math.floor(l), LATENCY_UNKNOWN - 1) end
  return l * LOAD_SHIFT + s.seq
end

local function index_add(prefix, id, s)
  local load, lat = load_score(s), latency_score(s)
  each_tag(s.tags, function(tag)
    redis.call('ZADD', prefix .. 'avail:seq:' .. tag, s.seq, id)
    redis.call('ZADD', prefix .. 'avail:load:' .. tag, load, id)
    redis.call('ZADD', prefix .. 'avail:lat:' .. tag, lat, id)
  end)
  if s.lat then
    if math.abs(tonumber(s.lat)) <= GEO_MAX_LAT then
      redis.call('GEOADD', prefix .. 'avail:geo', s.lon, s.lat, id)
    else
      redis.call('ZADD', prefix .. 'avail:polar', s.seq, id)
    end
  end
end

local function index_remove(prefix, id, s)
  each_tag(s.tags, function(tag)
    redis.call('ZREM', prefix .. 'avail:seq:' .. tag, id)
    redis.call('ZREM', prefix .. 'avail:load:' .. tag, id)
    redis.call('ZREM', prefix .. 'avail:lat:' .. tag, id)
  end)
  if s.lat then
    redis.call('ZREM', prefix .. 'avail:geo', id)
    redis.call('ZREM', prefix .. 'avail:polar', id)
  end
end

local function b(x) if x then return 1 else return 0 end end

-- Moves a proxy from state `old` to state `new` (either may be nil: added,
-- removed) in the membership sets the pool's stats are counted from (`active`,
-- `leased`) and in the availability indexes. Stats are set sizes, never
-- counters, so they cannot drift from the proxies.
local function account(prefix, id, old, new)
  local was_active, is_active = old and old.active, new and new.active
  if was_active and not is_active then
    redis.call('SREM', prefix .. 'active', id)
  elseif is_active and not was_active then
    redis.call('SADD', prefix .. 'active', id)
  end
  local was_leased, is_leased = old and old.leases > 0, new and new.leases > 0
  if was_leased and not is_leased then
    redis.call('SREM', prefix .. 'leased', id)
  elseif is_leased and not was_leased then
    redis.call('SADD', prefix .. 'leased', id)
  end
  local was = old and old.available
  local is = new and new.available
  if was and is then
    if old.tags ~= new.tags or old.lat ~= new.lat or old.lon ~= new.lon then
      index_remove(prefix, id, old)
      index_add(prefix, id, new)
    else
      if old.leases ~= new.leases then
        local load = load_score(new)
        redis.call('ZADD', prefix .. 'avail:load:all', load, id)
        for tag in string.gmatch(new.tags, '%S+') do
          redis.call('ZADD', prefix .. 'avail:load:' .. tag, load, id)
        end
      end
      if old.latency ~= new.latency then
        local lat = latency_score(new)
        redis.call('ZADD', prefix .. 'avail:lat:all', lat, id)
        for tag in string.gmatch(new.tags, '%S+') do
          redis.call('ZADD', prefix .. 'avail:lat:' .. tag, lat, id)
        end
      end
    end
  elseif was then
    index_remove(prefix, id, old)
  elseif is then
    index_add(prefix, id, new)
  end
end

-- account(prefix, id, s, with_leases(s, leases)) for a change of the lease
-- count alone (acquire, release, reclaim): the hot path, so the new state is
-- only built when the proxy enters or leaves the availability indexes.
local function account_leases(prefix, id, s, leases)
  local is = s.active and not s.cooling and (s.max == nil or leases < s.max)
  if not (s.available and is) then
    return account(prefix, id, s, with_leases(s, leases))
  end
  if (s.leases > 0) ~= (leases > 0) then
    if leases > 0 then
      redis.call('SADD', prefix .. 'leased', id)
    else
      redis.call('SREM', prefix .. 'leased', id)
    end
  end
  if leases ~= s.leases then
    local load = leases * LOAD_SHIFT + s.seq
    redis.call('ZADD', prefix .. 'avail:load:all', load, id)
    for tag in string.gmatch(s.tags, '%S+') do
      redis.call('ZADD', prefix .. 'avail:load:' .. tag, load, id)
    end
  end
end

-- Gives one slot back to a proxy whose snapshot is `s`.
local function give_back(prefix, id, s)
  if s.leases <= 0 then
    return false
  end
  redis.call('HINCRBY', prefix .. 'proxy:' .. id, 'current_leases', '-1')
  account_leases(prefix, id, s, s.leases - 1)
  return true
end

-- The proxy id with this insertion sequence, if it still exists.
local function proxy_by_seq(prefix, seq)
  local r = redis.call('ZRANGEBYSCORE', prefix .. 'proxies', seq, seq, 'LIMIT', 0, 1)
  return r[1]
end

-- Ends a live lease found in the `leases` set (already removed from it): marks
-- the record (if still there) with `status` and gives the slot back to its proxy
-- (if that proxy still exists). Returns true when a slot was given back.
local function finish_lease(prefix, member, status, now, grace)
  local lease_id, seq = string.match(member, '^([^:]+):(%d+)$')
  if not lease_id then
    return false
  end
  redis.call('ZREM', prefix .. 'holders', lease_id)
  local rec = prefix .. 'lease:' .. lease_id
  if redis.call('HGET', rec, 'status') == 'active' then
    if status == 'released' then
      redis.call('HSET', rec, 'status', 'released', 'released_at_ms', fmt_int(now))
    else
      redis.call('HSET', rec, 'status', status)
      local expires = tonumber(redis.call('HGET', rec, 'expires_at_ms') or '0') or 0
      local keep = math.max(expires, now) + grace
      redis.call('PEXPIREAT', rec, fmt_int(keep))
    end
  end
  local id = proxy_by_seq(prefix, tonumber(seq))
  if not id then
    return false
  end
  local old = snapshot(prefix, id)
  if not old then
    return false
  end
  return give_back(prefix, id, old)
end

-- Expires up to `limit` leases of the pool whose expiry is <= now. Returns how
-- many gave a slot back, and whether expired leases remain.
local function reclaim(prefix, now, limit, grace)
  local live = prefix .. 'leases'
  local due = redis.call('ZRANGEBYSCORE', live, '-inf', now, 'LIMIT', '0', limit)
  local n = 0
  for _, member in ipairs(due) do
    redis.call('ZREM', live, member)
    if finish_lease(prefix, member, 'expired', now, grace) then
      n = n + 1
    end
  end
  local more = false
  if #due >= limit then
    more = redis.call('ZCOUNT', live, '-inf', now) > 0
  end
  return n, more
end

-- Wakes the pool's waiting acquires (pub/sub on the pool's hash-tagged channel).
local function notify_freed(prefix)
  redis.call('PUBLISH', prefix .. 'freed', '1')
end

-- Lifts up to `limit` cooldowns that are over (the `cooldown` zset is scored by
-- their end): the proxies become available again. Returns how many. When it
-- lifted any, or when `stale_hint` says the caller found the hint due, it sets
-- the meta hash's `cool_next` hint to the earliest cooldown end left (or removes
-- it), so acquires skip this call until then. (The hint may be early, when a
-- cooldown ended another way, never late: report.lua lowers it as it adds one.)
local function lift_cooldowns(prefix, now, limit, stale_hint)
  local key = prefix .. 'cooldown'
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', key, id)
    local s = snapshot(prefix, id)
    if s and s.cooling then
      redis.call('HDEL', prefix .. 'proxy:' .. id, 'cooldown_until_ms')
      account(prefix, id, s, with_cooling(s, false))
    end
  end
  if #due == 0 and not stale_hint then
    return 0
  end
  local first = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
  if first[2] then
    redis.call('HSET', prefix .. 'meta', 'cool_next', first[2])
  else
    redis.call('HDEL', prefix .. 'meta', 'cool_next')
  end
  return #due
end
