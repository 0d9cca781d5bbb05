-- reported: run by the frontend (proxy mode) once a Status 2 is written.
-- KEYS: 1 sync state (this device), 2 owners (the mailbox's)
-- ARGV: 1 ttl seconds, 2 device key, 3 the answered Ping's owner prefix "pod\trequest\t",
--       4.. folder id, version, ...
-- The answered Ping has ended: its owner entry goes (release_owner), in the same round trip.
-- Nothing is acknowledged (the device's Sync does that). The count of Status 2 answers since
-- its last Sync grows, and the versions reported are kept (`p:<id>`): claim backs off only
-- when the count is high and nothing newer than these is news (I2: no tight loop).
release_owner(KEYS[2], ARGV[2], ARGV[3])
local r = redis.call('HINCRBY', KEYS[1], 'r', 1)
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'p:' .. ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return r
