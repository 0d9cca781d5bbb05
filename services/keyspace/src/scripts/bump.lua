-- bump: run by the watcher on each (coalesced) change of a mailbox, atomically.
-- KEYS: 1 versions, 2 owners
-- ARGV: 1 now in ms, 2 ttl seconds, 3.. folder ids
-- Returns {folder count, id, version, ..., device key, owner value, ...}: the new versions, then
-- the owners whose Ping has not expired. Expired owners are removed on the way.
local now = tonumber(ARGV[1])
local out = {tostring(#ARGV - 2)}
for i = 3, #ARGV do
  out[#out + 1] = ARGV[i]
  out[#out + 1] = tostring(redis.call('HINCRBY', KEYS[1], ARGV[i], 1))
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
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
