#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test on the real services.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
