-- sync_start: run by the frontend (proxy mode) when a Sync request starts, before the upstream
-- sees it: what the Sync will have delivered.
-- KEYS: 1 versions, 2 sync state (this device), 3 folders (this device), 4 params (this device)
-- ARGV: 1 ttl seconds
-- Returns {last full Sync request's collections (JSON) or '', id, version, ...}: the version
-- (as news defines it) of every folder with one, by EAS id.
local learned = redis.call('HEXISTS', KEYS[3], '') == 1
-- Classes matter only while the hierarchy is not known: take them from the device's last Ping,
-- as claim does, so that the baseline a Sync sets is the version claim compares with.
local classes = {}
if not learned then
  local raw = redis.call('GET', KEYS[4])
  if raw then
    local ok, cached = pcall(cjson.decode, raw)
    if ok and type(cached.f) == 'table' then
      for _, folder in ipairs(cached.f) do
        classes[folder[1]] = folder[2]
      end
    end
  end
end
local out = {redis.call('HGET', KEYS[2], 'l') or ''}
local seen = {}
local function add(id)
  if seen[id] or id == '' or string.sub(id, 1, 2) == 's:' then
    return
  end
  seen[id] = true
  out[#out + 1] = id
  local class = classes[id] or 'Email'
  out[#out + 1] = version_of(KEYS[1], id, store_field(KEYS[3], learned, id, class))
end
local versions = redis.call('HKEYS', KEYS[1])
for _, id in ipairs(versions) do
  add(id)
end
if learned then
  for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do
    add(id)
  end
end
-- The versions read here are this Redis state's: `i` says the state is still the one they came
-- from when the Sync completes (see synced).
redis.call('HSET', KEYS[2], 'i', '1')
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
return out
