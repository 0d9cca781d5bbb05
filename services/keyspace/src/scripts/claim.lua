-- claim: run by the frontend on every Ping, atomically.
-- KEYS: 1 versions, 2 owners, 3 notified (this device), 4 params (this device),
--       5 unconfirmed (this device), 6 folders (this device), 7 sync state (this device),
--       8 the mailbox's hierarchy version, 9 the mailbox's watched store folders,
--       10 the mailbox's devices
-- ARGV: 1 device key, 2 owner value "pod\trequest\texpiry_ms", 3 ttl seconds,
--       4 heartbeat ('' when the body has none), 5 folder count (-1 when the body has none),
--       6 now (ms), 7 mode ('proxy': acknowledged by Sync; 'standalone': by the answer),
--       8 most devices per mailbox (0: no limit), 9.. folder id, class, id, class, ...
-- Returns {'full'} when the device is new and the mailbox has state for as many devices as
-- allowed (nothing is written); {'missing'} when heartbeat or folders are neither in the body nor cached (Status 3);
-- {'hierarchy', previous owner or ''} when a folder is not in the device's known hierarchy
-- (Status 7); else {'ok', previous owner or '', cached heartbeat or '', cached folders JSON or
-- '', Status 2 answers since the last Sync ('0' when a change is fresh), '1' when the device's
-- hierarchy is known, '1' when Redis held no state for the device (then every folder is listed
-- at its new baseline), changed id, version, changed id, version, ...}.
local ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[6])
-- Devices with state, by their last Ping: a flood of fresh DeviceIds is refused instead of
-- filling Redis, and the devices already known keep working (their state is not evicted).
local max_devices = tonumber(ARGV[8])
if max_devices > 0 and not redis.call('ZSCORE', KEYS[10], ARGV[1]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now - ttl * 1000)
  if redis.call('ZCARD', KEYS[10]) >= max_devices then
    return {'full'}
  end
end
redis.call('ZADD', KEYS[10], now, ARGV[1])
redis.call('EXPIRE', KEYS[10], ttl)
local heartbeat = tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local folders = nil
if count >= 0 then
  folders = {}
  for i = 0, count - 1 do
    folders[#folders + 1] = {ARGV[9 + 2 * i], ARGV[10 + 2 * i]}
  end
end
local from_body = heartbeat ~= nil or folders ~= nil
local cached_heartbeat, cached_folders = '', ''
if heartbeat == nil or folders == nil then
  local raw = redis.call('GET', KEYS[4])
  if raw then
    local cached = cjson.decode(raw)
    if heartbeat == nil then
      heartbeat = cached.h
      cached_heartbeat = tostring(cached.h)
    end
    if folders == nil then
      folders = cached.f
      cached_folders = cjson.encode(cached.f)
    end
  end
end
if heartbeat == nil or folders == nil then
  return {'missing'}
end
if from_body then
  redis.call('SET', KEYS[4], cjson.encode({h = heartbeat, f = folders}), 'EX', ttl)
else
  redis.call('EXPIRE', KEYS[4], ttl)
end
local previous = redis.call('HGET', KEYS[2], ARGV[1]) or ''
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ttl)
-- A hierarchy learned from FolderSync (proxy mode) that lacks a pinged folder, or predates a
-- hierarchy change: the device's view is out of date, and FolderSync will tell it (and us).
local learned = redis.call('HGET', KEYS[6], '')
if learned then
  if learned ~= (redis.call('GET', KEYS[8]) or '0') then
    return {'hierarchy', previous}
  end
  for _, folder in ipairs(folders) do
    if redis.call('HEXISTS', KEYS[6], folder[1]) == 0 then
      return {'hierarchy', previous}
    end
  end
end
local proxy = ARGV[7] == 'proxy'
-- The last Status 2 stands if the device came back before that Ping's heartbeat ran out: only
-- an answer brings a device back early. Coming back later, it may have waited out a connection
-- a carrier dropped silently, the answer with it: report those folders again (a duplicate at
-- worst, never a loss).
local unconfirmed = {}
if not proxy then
  unconfirmed = redis.call('HGETALL', KEYS[5])
end
if #unconfirmed > 0 then
  local until_ms, restore = nil, {}
  for i = 1, #unconfirmed, 2 do
    if unconfirmed[i] == '_until' then
      until_ms = tonumber(unconfirmed[i + 1])
    else
      restore[#restore + 1] = unconfirmed[i]
      restore[#restore + 1] = unconfirmed[i + 1]
    end
  end
  if until_ms and now >= until_ms and #restore > 0 then
    redis.call('HSET', KEYS[3], unpack(restore))
  end
  redis.call('DEL', KEYS[5])
end
local repeats = '0'
if proxy then
  repeats = redis.call('HGET', KEYS[7], 'r') or '0'
end
local fresh = redis.call('EXISTS', KEYS[3]) == 0
local out = {'ok', previous, cached_heartbeat, cached_folders, repeats, learned and '1' or '0',
  fresh and '1' or '0'}
-- The store folders this Ping watches, each until the Ping's expiry: a store change of none of
-- them needs no wake (bump counts it unwatched).
local expiry = tonumber(string.match(ARGV[2], '\t(%d+)$') or '0')
for _, folder in ipairs(folders) do
  local field = store_field(KEYS[6], learned, folder[1], folder[2])
  news(KEYS[1], KEYS[3], folder[1], field, out, fresh)
  if field and tonumber(redis.call('HGET', KEYS[9], field) or '0') < expiry then
    redis.call('HSET', KEYS[9], field, expiry)
  end
end
if redis.call('EXISTS', KEYS[9]) == 1 then
  redis.call('EXPIRE', KEYS[9], ttl)
end
if proxy then
  -- Repeats count only while every folder reported is one already told at this version: a
  -- fresh change is answered at once, however often the device skipped its Sync.
  for i = 8, #out, 2 do
    if redis.call('HGET', KEYS[7], 'p:' .. out[i]) ~= out[i + 1] then
      out[5] = '0'
      break
    end
  end
end
redis.call('EXPIRE', KEYS[3], ttl)
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Versions must outlive every device's notified versions, or a reset would hide changes.
  redis.call('EXPIRE', KEYS[1], ttl)
end
return out
