#!/usr/bin/env bash
# Installs what the tests need, idempotently: Debian's libwbxml2-utils (the independent WBXML
# codec the cross-check runs) and cargo-nextest.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v wbxml2xml >/dev/null || ! command -v xml2wbxml >/dev/null; then
  echo "setup: installing libwbxml2-utils"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libwbxml2-utils
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
