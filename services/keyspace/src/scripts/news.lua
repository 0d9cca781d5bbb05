-- news: the one definition of "news for a device", prepended to claim and check.
-- Appends to `out` (id, version) for each folder whose version differs from the one last
-- reported to the device. A folder seen for the first time gets its baseline instead: what
-- came before is not news to the device. A difference either way counts: newer, or versions
-- lost and restarted; either way the device should look.
local function news(versions_key, notified_key, id, out)
  local version = redis.call('HGET', versions_key, id) or '0'
  local notified = redis.call('HGET', notified_key, id)
  if not notified then
    redis.call('HSET', notified_key, id, version)
  elseif notified ~= version then
    out[#out + 1] = id
    out[#out + 1] = version
  end
end

