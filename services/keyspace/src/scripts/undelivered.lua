-- undelivered: run by the frontend (standalone mode) when the connection a Status 2 was
-- written into failed before the device can have read it (reset by the device's kernel, or
-- its bytes never acknowledged within the TCP user timeout): a handover or an app restart.
-- KEYS: 1 notified (this device), 2 owners (the mailbox)
-- ARGV: 1 device key, 2.. folder id, version reported, ...
-- A folder still recorded at the version that answer reported goes back to one below it, so
-- the device's next claim or check finds it news (news.lua compares for difference). A folder
-- reported again since (a later answer) is left: that answer covers it. Returns the device's
-- owner entry, for the frontend to re-check that Ping; '' when no Ping is parked or no folder
-- was news again.
local restored = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], string.format('%d', tonumber(ARGV[i + 1]) - 1))
    restored = restored + 1
  end
end
if restored == 0 then
  return ''
end
return redis.call('HGET', KEYS[2], ARGV[1]) or ''
