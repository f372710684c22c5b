#!/usr/bin/env bash
# Read benchmark: s3mount next to direct aws-sdk-s3 reads of the same data in
# the same run, through a proxy that adds S3-like first-byte latency. Starts a
# private Garage unless S3MOUNT_TEST_ENDPOINT names another endpoint.
#
#   scripts/bench-read.sh                      # 4 x 1 GiB files, 3 runs, 20 ms
#   BENCH_FILE_MIB=256 BENCH_RUNS=5 BENCH_LATENCY_MS=50 scripts/bench-read.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-garage.sh cargo bench --bench read
