-- release: run by the frontend once a Ping has ended: its owner entry goes, unless a newer
-- Ping already owns the device. Keeps the owners hash to the Pings still parked, which is what
-- bump reads on every change.
-- KEYS: 1 owners; ARGV: 1 device key, 2 the ended Ping's owner prefix "pod\trequest\t"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.sub(value, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
