-- audit.lua: find and repair drift between a pool's proxies, their counts and
-- their index entries (a counter edited by hand, a bug).
--
-- KEYS[1]  P meta
-- ARGV[1]  pool prefix P
-- ARGV[2]  'check': a batch of proxies by seq, ARGV[3] the last seq audited (0 to
--          start), ARGV[4] batch size (1..10000). Each proxy's availability is
--          compared with where its count lives (its load-index score, or `held`)
--          and its index entries are rebuilt when they disagree.
--       or 'recount', then ARGV[3..] seqs (1..MAX_ADD): the live set is read in
--          full (ZSCAN, O(L)) to count these proxies' live leases, and each
--          count that differs is set to what the live set says.
--
-- Reply: {next, counts, fixes}: `next` is the last seq covered (pass it back) or
-- -1 when the pool is done (always -1 for recount); `counts` flat pairs
-- seq, recorded count (check: every proxy of the batch with a count); `fixes`
-- flat triples proxy id, recorded, actual (recorded = actual when only index
-- entries were wrong). {-1, {}, {}} when the pool is gone.
-- Errors (nothing written): bad arguments.
--
-- Calls: check: HMGET meta, HMGET proxies, ZMSCORE load, HMGET held (whole batch),
-- plus index writes for the proxies repaired; recount: those plus one ZSCAN page
-- per 1,000 live leases.

local prefix = ARGV[1]
if not check_prefix(prefix, KEYS[1], K_META) then return fail('keys do not match the pool prefix') end
P = prefix
local mode = ARGV[2]
local m = read_meta(KEYS[1], 'next_seq', 'attrs', 'orders')
local counts, fixes = {}, {}

if mode == 'check' then
  local after = int_in(ARGV[3], 0, 9007199254740991)
  local limit = int_in(ARGV[4], 1, 10000)
  if not after or not limit then return fail('bad numeric argument') end
  if not m then return { -1, counts, fixes } end
  read_settings(m[2], m[5], m[6])
  local last = tonumber(m[4] or '0') or 0
  local to = math.min(last, after + limit)
  if to <= after then return { -1, counts, fixes } end
  local members = {}
  for s = after + 1, to do members[#members + 1] = fmt_int(s) end
  -- Every field of `held` for the batch, even for indexed proxies (a count in
  -- two places is drift too).
  local held = redis.call('HMGET', P .. K_HELD, unpack(members))
  load_states(members)
  for i, mem in ipairs(members) do
    local st = T[mem]
    if st.info then
      local should = avail(st.info, st.n)
      local twice = st.av0 and held[i]
      if should ~= st.av0 or twice then
        -- Rebuild: out of everything, back in as the state says.
        local n = st.n
        if twice then n = n + (tonumber(held[i]) or 0) end
        st.n = n
        if twice then wmap('held')[mem] = false end
        plan(st, st.info)
        fixes[#fixes + 1] = st.info.p.id
        fixes[#fixes + 1] = n
        fixes[#fixes + 1] = n
      end
      if st.n > 0 then
        counts[#counts + 1] = st.seq
        counts[#counts + 1] = st.n
      end
    elseif st.av0 or held[i] then
      -- Entries of a proxy that no longer exists.
      redis.call('ZREM', P .. K_IDX .. 'load:all', mem)
      redis.call('HDEL', P .. K_HELD, mem)
    end
  end
  flush()
  if to >= last then return { -1, counts, fixes } end
  return { to, counts, fixes }
elseif mode == 'recount' then
  local seqs = {}
  for i = 3, #ARGV do
    if not int_in(ARGV[i], 1, 9007199254740991) then return fail('bad seq') end
    seqs[#seqs + 1] = ARGV[i]
  end
  if #seqs < 1 or #seqs > LIMITS.MAX_ADD then return fail('bad seq count') end
  if not m then return { -1, counts, fixes } end
  read_settings(m[2], m[5], m[6])
  local actual, want = {}, {}
  for _, s in ipairs(seqs) do
    want[s] = true
    actual[s] = 0
  end
  local cursor = '0'
  repeat
    local r = redis.call('ZSCAN', P .. K_LIVE, cursor, 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2], 2 do
      local s = string.match(r[2][i], '^(%d+):')
      if s and want[s] then actual[s] = actual[s] + 1 end
    end
  until cursor == '0'
  load_states(seqs)
  for _, s in ipairs(seqs) do
    local st = T[s]
    if st and st.info and st.n ~= actual[s] then
      fixes[#fixes + 1] = st.info.p.id
      fixes[#fixes + 1] = st.n
      fixes[#fixes + 1] = actual[s]
      st.n = actual[s]
      st.dirty = true
    end
  end
  flush()
  return { -1, counts, fixes }
end
return fail('bad mode')
