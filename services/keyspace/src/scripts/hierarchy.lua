-- hierarchy: run by the frontend (proxy mode) when a FolderSync response passes, atomically.
-- KEYS: 1 folders (this device)
-- ARGV: 1 '1' when the response replaces the whole hierarchy (the request's SyncKey was 0),
--       2 ttl seconds, 3 the mailbox's hierarchy version read when the FolderSync started,
--       4.. 'P', server id, "type\tparent\tname" | 'D', server id
-- Keeps the device's folders as the upstream told it: ServerId -> type, parent and name, and
-- under the empty field the hierarchy version they reflect. A Ping naming a folder outside
-- them, or made after a newer hierarchy change, answers Status 7 (see claim).
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
end
if ARGV[1] == '1' or redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], '', ARGV[3])
end
local i = 4
while i <= #ARGV do
  if ARGV[i] == 'P' then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    redis.call('HDEL', KEYS[1], ARGV[i + 1])
    i = i + 2
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
