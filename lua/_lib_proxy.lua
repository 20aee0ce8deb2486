-- _lib_proxy.lua: helpers for the scripts that write proxy fields
-- (proxy_add.lua, proxy_update.lua), prepended after _lib.lua to those scripts
-- only, so the hot scripts (acquire, release, cleanup) do not pay for defining
-- them on every call.

local PROXY_PROTOCOL = { http = true, https = true, socks4 = true, socks5 = true }

-- Validates the settable fields of a proxy, given as a table field -> value.
-- Returns nil when they are valid, else an error message.
local function check_proxy_fields(f)
  local allowed = {
    host = true, port = true, protocol = true, status = true, max_concurrency = true,
    username = true, password = true, source = true, country = true, city = true,
    isp = true, asn = true, latitude = true, longitude = true, checked_at = true,
  }
  for k, _ in pairs(f) do
    if not allowed[k] then return 'unknown proxy field ' .. tostring(k) end
  end
  if not is_text(f.host, 255) or string.find(f.host, '%s') then return 'bad host' end
  if not int_in(f.port, 1, 65535) then return 'bad port' end
  if not PROXY_PROTOCOL[f.protocol] then return 'bad protocol' end
  if not PROXY_STATUS[f.status] then return 'bad status' end
  if f.max_concurrency ~= nil and not int_in(f.max_concurrency, 1, MAX_U32) then
    return 'bad max_concurrency'
  end
  if f.username ~= nil and not is_text(f.username, 256) then return 'bad username' end
  if f.password ~= nil and (type(f.password) ~= 'string' or #f.password > 256) then
    return 'bad password'
  end
  if (f.username == nil) ~= (f.password == nil) then return 'username without password' end
  for _, k in ipairs({ 'source', 'country', 'city', 'isp' }) do
    if f[k] ~= nil and not is_text(f[k], 256) then return 'bad ' .. k end
  end
  if f.asn ~= nil and not int_in(f.asn, 0, MAX_U32) then return 'bad asn' end
  if (f.latitude == nil) ~= (f.longitude == nil) then return 'latitude without longitude' end
  if f.latitude ~= nil then
    if not num_in(f.latitude, -90, 90) then return 'bad latitude' end
    if not num_in(f.longitude, -180, 180) then return 'bad longitude' end
  end
  if f.checked_at ~= nil and not is_text(f.checked_at, 64) then return 'bad checked_at' end
  return nil
end

-- Reads `n` proxies' field lists from ARGV starting at `at`:
-- id, tags, nfields, then nfields (field, value) pairs. Returns the list and the
-- next index, or nil and an error message.
local function read_proxies(n, at)
  local out = {}
  for i = 1, n do
    local id, tags, nf = ARGV[at], ARGV[at + 1], int_in(ARGV[at + 2], 0, 15)
    if not is_uuid(id) then return nil, 'bad proxy id' end
    if type(tags) ~= 'string' or #tags > 8192 then return nil, 'bad tags' end
    for tag in string.gmatch(tags, '%S+') do
      if not is_tag(tag) or tag == 'all' then return nil, 'bad tag' end
    end
    if nf == nil then return nil, 'bad field count' end
    local fields = {}
    for j = 0, nf - 1 do
      local k, v = ARGV[at + 3 + 2 * j], ARGV[at + 4 + 2 * j]
      if type(k) ~= 'string' or type(v) ~= 'string' or fields[k] ~= nil then
        return nil, 'bad field list'
      end
      fields[k] = v
    end
    local err = check_proxy_fields(fields)
    if err then return nil, err .. ' (proxy ' .. id .. ')' end
    out[i] = { id = id, tags = tags, fields = fields }
    at = at + 3 + 2 * nf
  end
  return out, at
end

-- Writes a proxy's settable fields, removing the optional ones not given.
local function write_proxy_fields(key, fields)
  local optional = { 'max_concurrency', 'username', 'password', 'source', 'country', 'city',
    'isp', 'asn', 'latitude', 'longitude', 'checked_at' }
  local dels = {}
  for _, k in ipairs(optional) do
    if fields[k] == nil then dels[#dels + 1] = k end
  end
  if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
  local args = {}
  for k, v in pairs(fields) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  redis.call('HSET', key, unpack(args))
end
