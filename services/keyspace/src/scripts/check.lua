-- check: run by a frontend for a parked Ping it may have missed news for (after a NATS
-- reconnect). Read-only but for a missing baseline.
-- KEYS: 1 versions, 2 owners, 3 notified (this device), 4 folders (this device)
-- ARGV: 1 device key, 2 owner value of the parked Ping, 3.. monitored folder id, class, ...
-- Returns {'superseded'} when a newer Ping owns the device; else {'ok', id, version, ...} for
-- the folders with news.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return {'superseded'}
end
local learned = redis.call('HEXISTS', KEYS[4], '') == 1
local out = {'ok'}
for i = 3, #ARGV, 2 do
  news(KEYS[1], KEYS[3], ARGV[i], store_field(KEYS[4], learned, ARGV[i], ARGV[i + 1]), out, false)
end
return out
