#!/usr/bin/env bash
# Runs a command against clustered stores: a Redis Cluster (three primaries, three replicas)
# and a three-node NATS cluster with JetStream, started here from the machine's redis-server
# and nats-server and stopped afterwards. The command sees REDIS_MODE=cluster, REDIS_URL (the
# seed nodes), NATS_URL (the nodes) and CHANGES_REPLICAS=3, which the tests and the services
# take from the environment. Example (what scripts/test.sh runs):
#   bash scripts/on-clustered-stores.sh cargo nextest run -p dp-testkit --test ping --test drain
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p dp-testkit --bin clustered-stores
settings=$(mktemp -u /tmp/dp-clustered-stores.XXXXXX)
target/debug/clustered-stores "$settings" &
stores=$!
trap 'kill $stores 2>/dev/null || true; wait $stores 2>/dev/null || true; rm -f "$settings"' EXIT
# The stores write their settings once both clusters answer (within a minute).
for _ in $(seq 600); do
    [ -s "$settings" ] && break
    kill -0 $stores 2>/dev/null || { echo "clustered stores failed to start" >&2; exit 1; }
    sleep 0.1
done
[ -s "$settings" ] || { echo "clustered stores did not start within a minute" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
. "$settings"
set +a
"$@"
