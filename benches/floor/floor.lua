#!lua name=lhfloor
-- The floor of the storage's layout: the Redis commands that lua/acquire.lua and
-- lua/release.lua run for plain least_used requests on a pool with one declared
-- attribute (see their headers), with every argument made once and kept (a
-- proxy's record key and text, live-set member and scores are strings built on
-- its first lease): what a cycle costs Redis for the commands alone, before
-- any of the scripts' own work. Bench-only (benches/redis_instructions.sh runs
-- it beside redis-semaphore). It is a lower bound: a proxy's leases reuse one
-- record key, and nothing is checked.
--
-- floor_acquire  KEYS: meta, live, load:all (the 16 tag index keys are named from it)
--                ARGV: n, variant ('full': as the layout is; 'norec': no lease
--                record; 'onekey': no load:all, only the tag keys; 'lean': both)
--   c=1 form (n = 1): TIME, HMGET meta, ZRANGE, SET record, ZADD per load key, ZADD live
--   batch form: TIME, HMGET meta, ZRANGE, MSET records, ZADD per load key touched, ZADD live
--   Reply: the seqs of the proxies taken.
-- floor_release  KEYS: meta, live, load:all
--                (the record keys are the proxies' own); ARGV: variant, then the seqs
--   c=1 form: HMGET meta, TIME, GET record, ZREM live, SET record PX, ZADD XX INCR
--   load:all, ZADD per other load key
--   batch form: HMGET meta, TIME, MGET records, ZMSCORE live, ZMSCORE load:all, ZREM
--   live, SET PX per record, ZADD per load key touched
-- Variants: 'norec' and 'lean' run no record command (GET, SET, MGET, MSET);
-- 'onekey' and 'lean' keep a proxy's count in its tag's key alone (one ZADD per
-- count change; a batch release reads the counts with one ZMSCORE per tag key).
-- Proxies are seqs 1..N in load:all with score count * 2^32 + seq, and in the
-- tag key of seq % 16 with the same score (floor_setup).

local SHIFT = 4294967296
-- Globals as locals, bound on the first call (loading sees only the registration API).
local unpack, tonumber
local function bind() unpack, tonumber = _G.unpack, _G.tonumber end

-- Per proxy seq (a string), its strings, made once: record key and texts,
-- live-set member, load scores at count 0 and 1, its tag key index.
local P = {}
-- The 16 tag index keys, named from load:all's (`...:idx:load:all` ->
-- `...:idx:load:country=T<i>`), made once: a call passes 3 keys, as few as the
-- real scripts' (each key or argument costs FCALL ~1,100 instructions).
local TAGS
local function tag_keys(all)
  if not TAGS then
    TAGS = {}
    local base = string.sub(all, 1, #all - 3)
    for t = 0, 15 do TAGS[t] = base .. 'country=T' .. t end
  end
  return TAGS
end

local function strs(m, keys)
  local p = P[m]
  if p then return p end
  local seq = tonumber(m)
  p = { rec = 'floor:' .. m, active = 'active ' .. m .. ' 1765000000000 60000 worker-1',
    released = 'released ' .. m .. ' 1765000000000 60000 1765000001000 worker-1',
    member = m .. ':1765000000000123', up = string.format('%d', SHIFT + seq),
    down = string.format('%d', seq), tag = tag_keys(keys[3])[seq % 16] }
  P[m] = p
  return p
end

redis.register_function('floor_setup', function(keys, args)
  bind()
  local n = tonumber(args[1])
  local tags = tag_keys(keys[3])
  redis.call('DEL', keys[1], keys[2], keys[3], unpack(tags, 0, 15))
  redis.call('HSET', keys[1], 'id', 'floor', 'pver', '1', 'fence', '0', 'exp', '0')
  for s = 1, n do
    redis.call('ZADD', keys[3], s, s)
    redis.call('ZADD', tags[s % 16], s, s)
  end
  P = {}
  return n
end)

local EXP = '1765000060000'
local turn = 0
-- Reused argument tables (no table made per call).
local A = { recs = {}, live = {}, all = {}, tags = {}, tagn = {}, out = {} }

-- A call's index writes grouped by tag key (one ZADD per key touched, as the
-- scripts' flush() does): tag_add() puts (score, member) under `key` and
-- returns the number of keys so far (`nt` before it); tag_write(nt) writes them.
local function tag_add(nt, key, score, member)
  local t = A.tags[key]
  if not t then
    t = { n = 0 }
    A.tags[key] = t
    nt = nt + 1
    A.tagn[nt] = key
  end
  t[t.n + 1], t[t.n + 2] = score, member
  t.n = t.n + 2
  return nt
end

local function tag_write(nt)
  local tags, tagn = A.tags, A.tagn
  for j = 1, nt do
    local t = tags[tagn[j]]
    redis.call('ZADD', tagn[j], unpack(t, 1, t.n))
    tags[tagn[j]] = nil
  end
end

redis.register_function('floor_acquire', function(keys, args)
  if not unpack then bind() end
  local n, variant = tonumber(args[1]), args[2]
  local norec = variant == 'norec' or variant == 'lean'
  local onekey = variant == 'onekey' or variant == 'lean'
  redis.call('TIME')
  redis.call('HMGET', keys[1], 'id', 'removing', 'pver', 'fence', 'exp', 'cool_next', 'wait_until')
  -- (onekey: each proxy's count is in its tag's key alone; the call takes its
  -- picks from one tag's key, as a batch of requests for one country does.)
  turn = turn + 1
  local got = redis.call('ZRANGE', onekey and tag_keys(keys[3])[turn % 16] or keys[3], 0, n - 1,
    'WITHSCORES')
  local recs, live, all, out = A.recs, A.live, A.all, A.out
  local k = #got / 2
  local nt = 0
  for i = 1, k do
    local m = got[2 * i - 1]
    local p = strs(m, keys)
    recs[2 * i - 1], recs[2 * i] = p.rec, p.active
    live[2 * i - 1], live[2 * i] = EXP, p.member
    all[2 * i - 1], all[2 * i] = p.up, m
    nt = tag_add(nt, p.tag, p.up, m)
    out[i] = m
  end
  if not norec then
    if k == 1 then redis.call('SET', recs[1], recs[2], 'GET')
    else redis.call('MSET', unpack(recs, 1, 2 * k)) end
  end
  if not onekey then redis.call('ZADD', keys[3], unpack(all, 1, 2 * k)) end
  tag_write(nt)
  redis.call('ZADD', keys[2], unpack(live, 1, 2 * k))
  for i = k + 1, #out do out[i] = nil end
  return out
end)

redis.register_function('floor_release', function(keys, args)
  if not unpack then bind() end
  local variant = args[1]
  local norec = variant == 'norec' or variant == 'lean'
  local onekey = variant == 'onekey' or variant == 'lean'
  local n = #args - 1
  redis.call('HMGET', keys[1], 'id', 'removing', 'pver', 'wait_until')
  redis.call('TIME')
  if n == 1 then
    local p = strs(args[2], keys)
    if not norec then redis.call('GET', p.rec) end
    redis.call('ZREM', keys[2], p.member)
    if not norec then redis.call('SET', p.rec, p.released, 'PX', '60000', 'GET') end
    if onekey then
      redis.call('ZADD', p.tag, 'XX', 'INCR', '-4294967296', args[2])
    else
      local s = redis.call('ZADD', keys[3], 'XX', 'INCR', '-4294967296', args[2])
      redis.call('ZADD', p.tag, s, args[2])
    end
    return 1
  end
  local recs, live, all, tags, tagn = A.recs, A.live, A.all, A.tags, A.tagn
  local nt = 0
  for i = 1, n do
    local m = args[1 + i]
    local p = strs(m, keys)
    recs[i], live[i], all[2 * i - 1], all[2 * i] = p.rec, p.member, p.down, m
    nt = tag_add(nt, p.tag, p.down, m)
  end
  if not norec then redis.call('MGET', unpack(recs, 1, n)) end
  redis.call('ZMSCORE', keys[2], unpack(live, 1, n))
  if onekey then
    -- One ZMSCORE per tag key of the leases' proxies.
    for j = 1, nt do
      local t = tags[tagn[j]]
      local ms = {}
      for x = 2, t.n, 2 do ms[#ms + 1] = t[x] end
      redis.call('ZMSCORE', tagn[j], unpack(ms))
    end
  else
    local seqs = {}
    for i = 1, n do seqs[i] = args[1 + i] end
    redis.call('ZMSCORE', keys[3], unpack(seqs))
  end
  redis.call('ZREM', keys[2], unpack(live, 1, n))
  if not norec then
    for i = 1, n do
      redis.call('SET', recs[i], strs(args[1 + i], keys).released, 'PX', '60000', 'GET')
    end
  end
  if not onekey then redis.call('ZADD', keys[3], unpack(all, 1, 2 * n)) end
  tag_write(nt)
  return n
end)
