-- ack: run by the frontend once a Status 2 is written, atomically.
-- KEYS: 1 notified (this device), 2 unconfirmed (this device)
-- ARGV: 1 ttl seconds, 2 when the answered Ping's heartbeat would have run out (ms),
--       3.. folder id, version, folder id, version, ...
-- Records the versions as reported (I2) and keeps the versions they replace in `unconfirmed`:
-- a written answer is not a heard one (a carrier may have dropped the connection silently),
-- so the device's next claim decides whether the report stands (see claim).
local ttl = tonumber(ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], '_until', ARGV[2])
for i = 3, #ARGV, 2 do
  local previous = redis.call('HGET', KEYS[1], ARGV[i])
  if previous then
    redis.call('HSET', KEYS[2], ARGV[i], previous)
  end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
