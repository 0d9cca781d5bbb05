#!/usr/bin/env bash
# The base of every stand-in image: Debian 12 minbase from the Debian mirror this machine uses,
# imported into the local Docker engine. Idempotent: kept once made.
set -euo pipefail
TAG=directpush-standin/debian:bookworm
DOCKER=${DOCKER:-docker}
if $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
  exit 0
fi
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "deploy-smoke: making $TAG with mmdebstrap from $MIRROR"
mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm - "$MIRROR" \
  | $DOCKER import --change 'CMD ["bash"]' - "$TAG"
