-- news: the one definition of "a folder's version" and "news for a device", prepended to
-- claim, check and sync_start.
--
-- A folder's version is the sum of two counters in the mailbox's versions hash: its EAS id's
-- (changes addressed by ServerId) and its store folder's (changes addressed in the store's own
-- words, field 's:' .. path). Both only grow, so the sum changes exactly when either does.

-- The store path of a device's folder, from the hierarchy FolderSync taught (`type\tparent\t
-- name` per ServerId): Inbox, Drafts, Deleted Items and Sent Items are '#2' .. '#5' whatever
-- their names (the watcher maps the store's special-use names to the same); other folders are
-- their DisplayNames along ParentId, joined with '/'. nil when the hierarchy does not hold it.
local function store_path(folders_key, id)
  local segments = {}
  local current = id
  for _ = 1, 32 do
    local raw = redis.call('HGET', folders_key, current)
    if not raw then
      return nil
    end
    local kind, parent, name = string.match(raw, '^(%d+)\t([^\t]*)\t(.*)$')
    if kind == nil then
      return nil
    end
    if kind == '2' or kind == '3' or kind == '4' or kind == '5' then
      table.insert(segments, 1, '#' .. kind)
      return table.concat(segments, '/')
    end
    table.insert(segments, 1, name)
    if parent == '0' or parent == '' then
      return table.concat(segments, '/')
    end
    current = parent
  end
  return nil
end

-- The store field a device's folder answers to: its path when the device's hierarchy is known
-- (`learned`); else, for mail folders, 's:*', which every store change raises (the device is
-- told of any new mail in its mail folders rather than of none).
local function store_field(folders_key, learned, id, class)
  if learned then
    local path = store_path(folders_key, id)
    if path then
      return 's:' .. path
    end
    return nil
  end
  if class == 'Email' then
    return 's:*'
  end
  return nil
end

local function version_of(versions_key, id, field)
  local version = tonumber(redis.call('HGET', versions_key, id) or '0')
  if field then
    version = version + tonumber(redis.call('HGET', versions_key, field) or '0')
  end
  return string.format('%d', version)
end

-- Appends to `out` (id, version) for each folder whose version differs from the one last
-- reported to the device. A folder seen for the first time gets its baseline instead: what
-- came before is not news to the device (unless `fresh`: the device has no state at all, and
-- every folder is listed at its baseline, for the frontend to decide). A difference either way
-- counts: newer, or versions lost and restarted; either way the device should look.
local function news(versions_key, notified_key, id, field, out, fresh)
  local version = version_of(versions_key, id, field)
  local notified = redis.call('HGET', notified_key, id)
  if not notified then
    redis.call('HSET', notified_key, id, version)
    if fresh then
      out[#out + 1] = id
      out[#out + 1] = version
    end
  elseif notified ~= version then
    out[#out + 1] = id
    out[#out + 1] = version
  end
end

