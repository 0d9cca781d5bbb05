-- ack: run by the frontend once a Status 2 is written, atomically.
-- KEYS: 1 notified (this device), 2 unconfirmed (this device), 3 owners (the mailbox's)
-- ARGV: 1 ttl seconds, 2 when the answered Ping's heartbeat would have run out (ms),
--       3 device key, 4 the answered Ping's owner prefix "pod\trequest\t",
--       5.. folder id, version, folder id, version, ...
-- The answered Ping has ended: its owner entry goes first (release_owner), whatever follows.
-- Records the versions as reported (I2) and keeps the versions they replace in `unconfirmed`:
-- a written answer is not a heard one (a carrier may have dropped the connection silently),
-- so the device's next claim decides whether the report stands (see claim).
-- Returns 0, recording nothing, when the device's state is gone since the claim this answer
-- came from (Redis lost its state, or a replica without it was promoted): written into an empty
-- Redis, these versions would make the device known again with only the folders reported, and
-- its next claim would take every other folder's version, changes since the loss included, for
-- a silent baseline (found by the chaos run). Left alone, the device is new to Redis at its
-- next claim, and the frontend decides whether its folders are news (epoch.rs).
release_owner(KEYS[3], ARGV[3], ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local ttl = tonumber(ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], '_until', ARGV[2])
for i = 5, #ARGV, 2 do
  local previous = redis.call('HGET', KEYS[1], ARGV[i])
  if previous then
    redis.call('HSET', KEYS[2], ARGV[i], previous)
  end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
