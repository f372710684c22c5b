#!/usr/bin/env bash
# Soak test: the drop-folder pipeline, analytics reads and listings through
# a mount for MINUTES minutes (default 30) while an HTTP fault proxy rotates
# through throttling, 5xx, cut/stalled/malformed bodies and short outages.
# Prints files moved, bytes verified, errors programs saw, retries and RSS;
# fails on any wrong byte, lost file, program error or RSS growth. CI runs
# the same test for 2 minutes.
#
#   scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
export S3MOUNT_SOAK_SECS=$((minutes * 60))
exec scripts/with-garage.sh cargo nextest run --test soak --no-capture
