#!/usr/bin/env bash
# POSIX metadata benchmark: a second `rsync -a` to the mount, and `ls -l` of
# objects another client wrote under each --posix-metadata setting, next to
# the same work done directly, with S3-like latency injected.
#
#   scripts/bench-posix.sh
#   BENCH_RSYNC_FILES=2000 BENCH_LIST_ENTRIES=5000 BENCH_RUNS=1 scripts/bench-posix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-garage.sh cargo bench --bench posix
