#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up the local services, then formatting, lints, and
# every test against the real PostgreSQL, Redis and NATS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real peers for the proxy tests: SOGo with sogo-activesync on a private Dovecot (Debian's).
bash scripts/peers.sh start </dev/null
cargo fmt --all -- --check
# Plain YAML (compose, Prometheus, OpenTelemetry, Grafana, chart values); templates: helm lint.
python3 -m yamllint --strict docker-compose.yml deploy ci/compose.smoke.yml helm/directpush/values.yaml helm/directpush/Chart.yaml
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
# The cluster tests again on clustered stores: a Redis Cluster (three primaries, three replicas)
# and a three-node NATS cluster, with REDIS_MODE=cluster and CHANGES_REPLICAS=3 (issue 15).
bash scripts/on-clustered-stores.sh cargo nextest run --locked --no-fail-fast -p dp-testkit --test ping --test drain --test edges -p dpctl --test operator
# The deployment run for real: the image built, the compose stack up and exercised, the chart
# validated against Kubernetes' schemas (README.md, "What runs for real in CI").
bash scripts/deploy-smoke.sh </dev/null
