#!/usr/bin/env bash
# Listing benchmark: ls -l, find and du -s through s3mount next to direct
# ListObjectsV2 paging of the same prefixes, with S3-like latency injected.
#
#   scripts/bench-catalog.sh
#   BENCH_LIST_ENTRIES=50000 BENCH_RUNS=5 scripts/bench-catalog.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-garage.sh cargo bench --bench catalog
