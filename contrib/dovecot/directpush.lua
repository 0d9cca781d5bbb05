-- directpush.lua: tells directpush's mailbox-watcher what changed in a Dovecot mailbox, so
-- that the parked ActiveSync Pings of its devices answer at once.
--
-- A push_notification Lua driver script (Dovecot 2.3.19 and later; see README.md beside it).
-- Settings: Dovecot 2.3's plugin settings (global, or per user from the userdb), or Dovecot
-- 2.4's lua_settings of the driver:
--   directpush_url            the watcher's ingest base URL, e.g. http://mailbox-watcher:8081
--   directpush_token          its INGEST_TOKEN
--   directpush_timeout_msecs  the longest one POST may hold a delivery (default 1000)
--
-- One transaction (a delivery, an APPEND, an EXPUNGE, a folder created ...) becomes at most
-- one POST of a JSON array of changes in the store's own words:
--   {"mailbox": user, "store_folder": "INBOX", "kind": "added"}
-- The call runs inside mail delivery: it never fails one. A watcher that is down or slow costs
-- the delivery at most the timeout and an error line in Dovecot's log; the mail is delivered,
-- and the device hears of it at its next Ping's end at the latest.
--
-- Dovecot's Lua refuses undeclared globals: everything is local but the hook functions.

local client = nil
-- Dovecot 2.4 hands its lua_settings to script_init; 2.3 has plugin settings per user.
local init_settings = {}

local function log_error(message)
  dovecot.i_error("directpush: " .. message)
end

-- Settings are named differently by Dovecot 2.3 and 2.4: try both.
local function http_client(timeout)
  if client then
    return client
  end
  local ok, made = pcall(dovecot.http.client, {
    request_timeout_msecs = timeout,
    request_absolute_timeout_msecs = timeout,
    connect_timeout_msecs = timeout,
    max_attempts = 1,
    user_agent = "dovecot-directpush",
  })
  if not ok then
    ok, made = pcall(dovecot.http.client, {
      request_timeout = timeout .. "ms",
      request_absolute_timeout = timeout .. "ms",
      connect_timeout = timeout .. "ms",
      request_max_attempts = 1,
      user_agent = "dovecot-directpush",
    })
  end
  if not ok then
    log_error("cannot create an HTTP client: " .. tostring(made))
    return nil
  end
  client = made
  return client
end

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(value)
  local escaped = string.gsub(value, '[%c"\\]', function(c)
    return escapes[c] or string.format('\\u%04x', string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

local function remember(ctx, mailbox, kind)
  if ctx == nil or mailbox == nil or mailbox == "" then
    return
  end
  local key = kind .. "\t" .. mailbox
  if not ctx.seen[key] then
    ctx.seen[key] = true
    ctx.changes[#ctx.changes + 1] = { mailbox = mailbox, kind = kind }
  end
end

local function setting(user, key)
  if user.plugin_getenv then
    local value = user:plugin_getenv(key)
    if value ~= nil and value ~= "" then
      return value
    end
  end
  return init_settings[key]
end

function script_init(settings)
  if type(settings) == "table" then
    init_settings = settings
  end
  return 0
end

function dovecot_lua_notify_begin_txn(user)
  local url = setting(user, "directpush_url")
  if url == nil or url == "" then
    return nil
  end
  local timeout = tonumber(setting(user, "directpush_timeout_msecs") or "") or 1000
  return {
    user = user.username,
    url = string.gsub(url, "/+$", "") .. "/v1/changes",
    token = setting(user, "directpush_token") or "",
    timeout = timeout,
    changes = {},
    seen = {},
  }
end

function dovecot_lua_notify_event_message_new(ctx, event)
  remember(ctx, event.mailbox, "added")
end

function dovecot_lua_notify_event_message_append(ctx, event)
  remember(ctx, event.mailbox, "added")
end

function dovecot_lua_notify_event_message_expunge(ctx, event)
  remember(ctx, event.mailbox, "removed")
end

function dovecot_lua_notify_event_flags_set(ctx, event)
  remember(ctx, event.mailbox, "modified")
end

function dovecot_lua_notify_event_flags_clear(ctx, event)
  remember(ctx, event.mailbox, "modified")
end

function dovecot_lua_notify_event_mailbox_create(ctx, event)
  -- The first delivery into a new Maildir creates INBOX: no device needs a FolderSync for it.
  if string.upper(event.mailbox or "") ~= "INBOX" then
    remember(ctx, event.mailbox, "hierarchy")
  end
end

function dovecot_lua_notify_event_mailbox_delete(ctx, event)
  remember(ctx, event.mailbox, "hierarchy")
end

function dovecot_lua_notify_event_mailbox_rename(ctx, event)
  remember(ctx, event.mailbox, "hierarchy")
end

function dovecot_lua_notify_end_txn(ctx, success)
  if ctx == nil or not success or #ctx.changes == 0 then
    return
  end
  local items = {}
  for i, change in ipairs(ctx.changes) do
    items[i] = '{"mailbox":' .. json_string(ctx.user) .. ',"store_folder":'
      .. json_string(change.mailbox) .. ',"kind":"' .. change.kind .. '"}'
  end
  local http = http_client(ctx.timeout)
  if http == nil then
    return
  end
  local request = http:request({ url = ctx.url, method = "POST" })
  request:add_header("Content-Type", "application/json")
  request:add_header("Authorization", "Bearer " .. ctx.token)
  request:set_payload("[" .. table.concat(items, ",") .. "]")
  local ok, response = pcall(request.submit, request)
  if not ok then
    log_error("POST " .. ctx.url .. " failed: " .. tostring(response))
    return
  end
  local status = response:status()
  if status < 200 or status > 299 then
    log_error("POST " .. ctx.url .. " answered " .. status .. " " .. tostring(response:reason())
      .. " for " .. #ctx.changes .. " change(s) of " .. ctx.user)
  end
end
