#!/usr/bin/env bash
# A working local cluster on this machine's PostgreSQL, Redis and NATS: one mailbox-watcher and
# two ping-frontends, migrations applied, a demo account. `scripts/dev-cluster.sh stop` stops it.
#
#   frontend fe-1  devices http://127.0.0.1:8080  admin http://127.0.0.1:9090
#   frontend fe-2  devices http://127.0.0.1:8082  admin http://127.0.0.1:9092
#   watcher  w-1   ingest  http://127.0.0.1:8081  admin http://127.0.0.1:9091
set -euo pipefail
cd "$(dirname "$0")/.."
state=.dev
mkdir -p "$state/logs"

stop() {
  for pidfile in "$state"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}
if [ "${1:-}" = stop ]; then stop; echo "dev cluster stopped"; exit 0; fi
stop

bash scripts/setup.sh
cargo build -q -p ping-frontend -p mailbox-watcher -p dpctl
bin=target/debug

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/directpush
export REDIS_URL=redis://127.0.0.1:6379 NATS_URL=nats://127.0.0.1:4222
export DP_NAMESPACE=dev LOG_FORMAT=text INGEST_TOKEN=dev-ingest-token-change-me
psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'directpush'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE directpush'
"$bin/ping-frontend" migrate
echo demo | "$bin/dpctl" accounts add demo@example.com >/dev/null

start() { # name, command...
  local name=$1; shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}
start w-1 env POD_NAME=w-1 LISTEN_ADDR=127.0.0.1:8081 ADMIN_ADDR=127.0.0.1:9091 "$bin/mailbox-watcher"
start fe-1 env POD_NAME=fe-1 LISTEN_ADDR=127.0.0.1:8080 ADMIN_ADDR=127.0.0.1:9090 "$bin/ping-frontend"
start fe-2 env POD_NAME=fe-2 LISTEN_ADDR=127.0.0.1:8082 ADMIN_ADDR=127.0.0.1:9092 "$bin/ping-frontend"
for admin in 9091 9090 9092; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "a service on admin port $admin is not ready; see $state/logs" >&2; exit 1; }
done

cat <<MSG
directpush dev cluster is running (logs in $state/logs; stop with: scripts/dev-cluster.sh stop)

Park a Ping (heartbeat 60 s, folder 5) on fe-1:
  echo '<Ping xmlns="Ping:"><HeartbeatInterval>60</HeartbeatInterval><Folders><Folder><Id>5</Id><Class>Email</Class></Folder></Folders></Ping>' \\
    | $bin/dpctl wbxml encode > /tmp/ping.wbxml
  curl -s -u demo@example.com:demo -H 'MS-ASProtocolVersion: 14.1' \\
    -H 'Content-Type: application/vnd.ms-sync.wbxml' --data-binary @/tmp/ping.wbxml \\
    'http://127.0.0.1:8080/Microsoft-Server-ActiveSync?Cmd=Ping&User=demo@example.com&DeviceId=dev1&DeviceType=SmartPhone' \\
    | $bin/dpctl wbxml decode

Meanwhile, in another terminal, new mail in folder 5 (the Ping answers Status 2 at once):
  INGEST_TOKEN=$INGEST_TOKEN $bin/dpctl change demo@example.com 5

Inspect the device:
  DP_NAMESPACE=dev $bin/dpctl device show demo@example.com dev1
MSG
