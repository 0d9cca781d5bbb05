-- release_owner: a Ping has ended (its answer written, or its client gone): its owner entry in
-- the mailbox's owners hash goes, unless a newer Ping already owns the device (the entry no
-- longer starts with the ended Ping's "pod\trequest\t"). Keeps the hash to the Pings still
-- parked, which is what bump reads on every change. Returns 1 when the entry went.
local function release_owner(owners, device, prefix)
  local value = redis.call('HGET', owners, device)
  if value and string.sub(value, 1, #prefix) == prefix then
    redis.call('HDEL', owners, device)
    return 1
  end
  return 0
end
