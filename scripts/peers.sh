#!/usr/bin/env bash
# Real peers for the proxy tests, from Debian's packages, on loopback only: a private Dovecot
# (IMAP on 127.0.0.1:1143, Maildir under .peers/), memcached on 11311, and SOGo 5.8 with its
# ActiveSync module on 127.0.0.1:20000 (its tables and users in the test PostgreSQL).
#   bash scripts/peers.sh start   # installs what is missing; (re)starts all three afresh
#   bash scripts/peers.sh stop
# SOGo reads only /etc/sogo/sogo.conf: this writes it (the package's own is kept once as
# sogo.conf.dist), so do not run it on a machine whose SOGo serves anyone.
# Users (password "pw"): sogo1, sogo2; tests add their own to .peers/dovecot/passwd (and to
# SOGo's sogo_users), with per-user plugin settings: Dovecot runs contrib/dovecot/directpush.lua
# (push_notification, Lua driver) for every mail process, and a user whose userdb fields set
# directpush_url tells that watcher of its changes. Master user (IMAP role): dpmaster / masterpw,
# as "user*dpmaster". LMTP: .peers/dovecot/run/lmtp. SOGo's ActiveSync endpoint:
#   http://127.0.0.1:20000/SOGo/Microsoft-Server-ActiveSync
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
dir="$top/.peers"
users=(sogo1 sogo2)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for_port() {
  for _ in $(seq 1 200); do answers "$1" && return 0; sleep 0.1; done
  echo "peers: $2 does not answer on 127.0.0.1:$1 (log: $3)" >&2
  tail -n 30 "$3" >&2 || true
  return 1
}

# Stops these peers, whichever checkout started them, and waits until their ports are free.
stop() {
  # sogod's workers ignore SIGTERM until their next request.
  pkill -9 -u sogo -f /usr/sbin/sogod 2>/dev/null || true
  pkill -f '/.peers/dovecot/dovecot.conf' 2>/dev/null || true
  pkill -f 'memcached -d -l 127.0.0.1 -p 11311' 2>/dev/null || true
  rm -f "$dir/sogo.pid" "$dir/memcached.pid"
  for port in 1143 11311 20000; do
    for _ in $(seq 1 100); do answers "$port" || break; sleep 0.1; done
    if answers "$port"; then
      echo "peers: something else holds 127.0.0.1:$port; stop it first" >&2
      return 1
    fi
  done
}

install() {
  local missing=()
  command -v dovecot >/dev/null || missing+=(dovecot-imapd dovecot-lmtpd)
  [ -x /usr/sbin/sogod ] || missing+=(sogo)
  [ -d /usr/lib/GNUstep/SOGo/ActiveSync.SOGo ] || missing+=(sogo-activesync)
  command -v memcached >/dev/null || missing+=(memcached)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "peers: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  id dpmail >/dev/null 2>&1 || as_root useradd --system --no-create-home --shell /usr/sbin/nologin dpmail
}

database() {
  psql -h 127.0.0.1 -U postgres -d postgres -Atc "select 1 from pg_database where datname='sogo'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE sogo'
  psql -h 127.0.0.1 -U postgres -d sogo -q <<'SQL'
CREATE TABLE IF NOT EXISTS sogo_users (c_uid text PRIMARY KEY, c_name text, c_password text, c_cn text, mail text);
-- SOGo's ActiveSync state; sogod does not create this one itself before its first use.
CREATE TABLE IF NOT EXISTS sogo_cache_folder (c_path VARCHAR(255) PRIMARY KEY, c_parent_path VARCHAR(255),
  c_type SMALLINT NOT NULL, c_creationdate INT4 NOT NULL, c_lastmodified INT4 NOT NULL,
  c_version INT4 NOT NULL DEFAULT 0, c_deleted SMALLINT NOT NULL DEFAULT 0, c_content TEXT);
SQL
  for user in "${users[@]}"; do
    psql -h 127.0.0.1 -U postgres -d sogo -qc "INSERT INTO sogo_users VALUES ('$user', '$user', 'pw', '$user', '$user@example.com') ON CONFLICT DO NOTHING"
  done
}

dovecot_start() {
  mkdir -p "$dir/dovecot" "$dir/mail" "$dir/dovecot/run"
  chown dpmail: "$dir/mail"
  : > "$dir/dovecot/passwd"
  for user in "${users[@]}"; do echo "$user:{PLAIN}pw::::::" >> "$dir/dovecot/passwd"; done
  echo "dpmaster:{PLAIN}masterpw::::::" > "$dir/dovecot/masters"
  chmod 0644 "$dir/dovecot/passwd" "$dir/dovecot/masters"
  # Mail processes run as dpmail and must read the script.
  chmod 0755 "$top/contrib" "$top/contrib/dovecot"
  chmod 0644 "$top/contrib/dovecot/directpush.lua"
  cat > "$dir/dovecot/dovecot.conf" <<EOF
base_dir = $dir/dovecot/run
state_dir = $dir/dovecot/state
log_path = $dir/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:$dir/mail/%u
mail_attribute_dict = file:%h/dovecot-attributes
mail_plugins = \$mail_plugins mail_lua notify push_notification push_notification_lua
auth_master_user_separator = *
imap_metadata = yes
plugin {
  push_notification_driver = lua:file=$top/contrib/dovecot/directpush.lua
}
mail_uid = dpmail
mail_gid = dpmail
first_valid_uid = 1
default_login_user = dovenull
# The IMAP role's measurements hold one session per watched mailbox.
default_process_limit = 3000
default_client_limit = 10000
mail_max_userip_connections = 50
default_internal_user = dovecot
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = 1143
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  client_limit = 10000
}
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/dovecot/masters
  master = yes
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/dovecot/passwd
}
userdb {
  driver = passwd-file
  args = $dir/dovecot/passwd
  default_fields = uid=dpmail gid=dpmail home=$dir/mail/%u
}
EOF
  mkdir -p "$dir/dovecot/state"
  dovecot -c "$dir/dovecot/dovecot.conf" </dev/null >/dev/null 2>&1
  wait_for_port 1143 Dovecot "$dir/dovecot.log"
  # SOGo reads a folder's state from a plain SELECT and needs HIGHESTMODSEQ in it, which
  # Dovecot sends only once a client has enabled CONDSTORE on that mailbox.
  for user in "${users[@]}"; do
    python3 - "$user" <<'PY'
import imaplib, sys
imap = imaplib.IMAP4("127.0.0.1", 1143)
imap.login(sys.argv[1], "pw")
imap._simple_command("ENABLE", "CONDSTORE")
imap.select("INBOX")
imap.logout()
PY
  done
}

sogo_start() {
  # Daemons get no inherited output: a caller reading this script's output would wait on them.
  memcached -d -l 127.0.0.1 -p 11311 -u memcache -P "$dir/memcached.pid" </dev/null >/dev/null 2>&1 \
    || memcached -d -l 127.0.0.1 -p 11311 -u nobody -P "$dir/memcached.pid" </dev/null >/dev/null 2>&1
  wait_for_port 11311 memcached /dev/null
  local db="postgresql://postgres:@127.0.0.1:5432/sogo"
  [ -f /etc/sogo/sogo.conf.dist ] || cp /etc/sogo/sogo.conf /etc/sogo/sogo.conf.dist
  cat > /etc/sogo/sogo.conf <<EOF
{
  SOGoProfileURL = "$db/sogo_user_profile";
  OCSFolderInfoURL = "$db/sogo_folder_info";
  OCSSessionsFolderURL = "$db/sogo_sessions_folder";
  OCSCacheFolderURL = "$db/sogo_cache_folder";
  OCSEMailAlarmsFolderURL = "$db/sogo_alarms_folder";
  SOGoUserSources = ({
    type = sql; id = users; viewURL = "$db/sogo_users";
    canAuthenticate = YES; isAddressBook = NO; userPasswordAlgorithm = plain;
  });
  SOGoIMAPServer = "imap://127.0.0.1:1143";
  SOGoMailDomain = example.com;
  SOGoMemcachedHost = "127.0.0.1:11311";
  SOGoTimeZone = UTC;
  SOGoLanguage = English;
  SOGoInternalSyncInterval = 10;
  SOGoMaximumPingInterval = 3540;
  SOGoMaximumSyncInterval = 3540;
  WOWorkersCount = 3;
  SOGoEnableEMailAlarms = NO;
}
EOF
  chmod 0644 /etc/sogo/sogo.conf
  mkdir -p "$dir/sogo-home" "$dir/sogo-run"
  chown sogo: "$dir/sogo-home" "$dir/sogo-run"
  : > "$dir/sogo.log"
  chown sogo: "$dir/sogo.log"
  # sogod refuses to run as root.
  (cd / && setsid runuser -u sogo -- env HOME="$dir/sogo-home" /usr/sbin/sogod -WONoDetach YES \
    -WOPort 127.0.0.1:20000 -WOLogFile "$dir/sogo.log" -WOPidFile "$dir/sogo-run/sogo.pid" \
    </dev/null >>"$dir/sogo.log" 2>&1 &
    echo $! > "$dir/sogo.pid")
  wait_for_port 20000 SOGo "$dir/sogo.log"
  # The port opens before the workers serve: wait for an answer to an ActiveSync OPTIONS.
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' -u sogo1:pw -X OPTIONS \
      http://127.0.0.1:20000/SOGo/Microsoft-Server-ActiveSync || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  echo "peers: SOGo does not answer ActiveSync OPTIONS (log: $dir/sogo.log)" >&2
  tail -n 30 "$dir/sogo.log" >&2
  return 1
}

case "${1:-start}" in
  start)
    # Always this checkout's own instances, started afresh: a leftover from another checkout
    # (or one shutting down) must not answer in their place.
    mkdir -p "$dir"
    chmod 0755 "$dir"
    stop
    install
    database
    dovecot_start
    sogo_start
    echo "peers: Dovecot IMAP 127.0.0.1:1143, SOGo http://127.0.0.1:20000/SOGo/Microsoft-Server-ActiveSync"
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 64 ;;
esac
