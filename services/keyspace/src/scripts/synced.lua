-- synced: run by the frontend (proxy mode) when a Sync response passes, atomically.
-- KEYS: 1 notified (this device), 2 sync state (this device)
-- ARGV: 1 ttl seconds, 2 the collections of the last full Sync request as JSON ('' unchanged),
--       3.. collection id, version read when the Sync started, SyncKey returned ('' none), ...
-- In proxy mode a folder is news until the device syncs it (MS-ASCMD 3.1.5.8): a completed
-- Sync of a collection makes the version read at its start the device's baseline. A change
-- that landed during the Sync has a newer version, and stays news. Any completed Sync also
-- ends the run of repeated Status 2 answers (`r`, see claim).
-- A Sync that started before Redis lost its state (no `i`, see sync_start) sets no baseline:
-- its versions, written into the new state, would make the device known again with only these
-- folders, and its next claim would take every other folder's version, changes since the loss
-- included, for a silent baseline. Left alone, the device is new to Redis at its next claim, and
-- the frontend decides whether its folders are news (I1: a duplicate at worst).
local current = redis.call('HEXISTS', KEYS[2], 'i') == 1
local ttl = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], 'l', ARGV[2])
end
for i = 3, #ARGV, 3 do
  if current then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  if ARGV[i + 2] ~= '' then
    redis.call('HSET', KEYS[2], 'k:' .. ARGV[i], ARGV[i + 2])
  end
end
if #ARGV >= 3 then
  redis.call('HSET', KEYS[2], 'r', 0)
  if current then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
end
redis.call('EXPIRE', KEYS[2], ttl)
return 1
