-- reported: run by the frontend (proxy mode) once a Status 2 is written.
-- KEYS: 1 sync state (this device); ARGV: 1 ttl seconds, 2.. folder id, version, ...
-- Nothing is acknowledged (the device's Sync does that). The count of Status 2 answers since
-- its last Sync grows, and the versions reported are kept (`p:<id>`): claim backs off only
-- when the count is high and nothing newer than these is news (I2: no tight loop).
local r = redis.call('HINCRBY', KEYS[1], 'r', 1)
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'p:' .. ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return r
