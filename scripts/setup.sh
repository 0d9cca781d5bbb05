#!/usr/bin/env bash
# Installs and starts what directpush's tests and local cluster need, idempotently: PostgreSQL,
# Redis and NATS with JetStream on their standard local ports, Debian's libwbxml2-utils (the
# independent WBXML codec the cross-check runs), curl and openssl (TLS and JWT tests), and
# cargo-nextest.
set -euo pipefail

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
