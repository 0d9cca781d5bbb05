-- check: run by a frontend for a parked Ping it may have missed news for (after a NATS
-- reconnect). Read-only but for a missing baseline.
-- KEYS: 1 versions, 2 owners, 3 notified (this device)
-- ARGV: 1 device key, 2 owner value of the parked Ping, 3.. monitored folder ids
-- Returns {'superseded'} when a newer Ping owns the device; else {'ok', id, version, ...} for
-- the folders with news.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return {'superseded'}
end
local out = {'ok'}
for i = 3, #ARGV do
  news(KEYS[1], KEYS[3], ARGV[i], out)
end
return out
