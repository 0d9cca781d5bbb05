-- bump: run by the watcher on each (coalesced) change of a mailbox, atomically.
-- KEYS: 1 versions, 2 owners, 3 hierarchy version, 4 watched store folders
-- ARGV: 1 now in ms, 2 ttl seconds, 3 '1' when the folder hierarchy changed,
--       4 count of folder ids, 5.. folder ids, then store folder paths
-- Returns {folder count, store folders watched, store folders unwatched, id, version, ...,
-- device key, owner value, ...}: the new versions of the folder ids, how many store folders a
-- parked Ping watches, then the owners whose Ping has not expired. Expired owners are removed
-- on the way.
local now = tonumber(ARGV[1])
local ids = tonumber(ARGV[4])
local out = {tostring(ids), '0', '0'}
for i = 5, 4 + ids do
  out[#out + 1] = ARGV[i]
  out[#out + 1] = tostring(redis.call('HINCRBY', KEYS[1], ARGV[i], 1))
end
local watched, unwatched = 0, 0
if #ARGV > 4 + ids then
  -- 's:*' is what devices whose hierarchy is not known watch: any store change raises it.
  redis.call('HINCRBY', KEYS[1], 's:*', 1)
  local anything = tonumber(redis.call('HGET', KEYS[4], 's:*') or '0') >= now
  for i = 5 + ids, #ARGV do
    local field = 's:' .. ARGV[i]
    redis.call('HINCRBY', KEYS[1], field, 1)
    if anything or tonumber(redis.call('HGET', KEYS[4], field) or '0') >= now then
      watched = watched + 1
    else
      unwatched = unwatched + 1
    end
  end
end
out[2], out[3] = tostring(watched), tostring(unwatched)
if #ARGV >= 5 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if ARGV[3] == '1' then
  -- Devices whose hierarchy was learned before this answer Status 7 until their FolderSync.
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
end
local owners = redis.call('HGETALL', KEYS[2])
for i = 1, #owners, 2 do
  local expiry = tonumber(string.match(owners[i + 1], '\t(%d+)$'))
  if expiry == nil or expiry < now then
    redis.call('HDEL', KEYS[2], owners[i])
  else
    out[#out + 1] = owners[i]
    out[#out + 1] = owners[i + 1]
  end
end
return out
