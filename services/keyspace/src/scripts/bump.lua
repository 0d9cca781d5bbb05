-- bump: run by the watcher on each (coalesced) change of a mailbox, atomically.
-- KEYS: 1 versions, 2 owners, 3 hierarchy version
-- ARGV: 1 now in ms, 2 ttl seconds, 3 '1' when the folder hierarchy changed, 4.. folder ids
-- Returns {folder count, id, version, ..., device key, owner value, ...}: the new versions, then
-- the owners whose Ping has not expired. Expired owners are removed on the way.
local now = tonumber(ARGV[1])
local out = {tostring(#ARGV - 3)}
for i = 4, #ARGV do
  out[#out + 1] = ARGV[i]
  out[#out + 1] = tostring(redis.call('HINCRBY', KEYS[1], ARGV[i], 1))
end
if #ARGV >= 4 then
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
