#!/usr/bin/env bash
# Write benchmark: appending to a large object and sqlite3 transactions
# through s3mount, next to downloading and re-uploading the object with
# aws-sdk-s3 and to sqlite3 on local disk, in the same run, through a proxy
# that adds S3-like first-byte latency. Starts a private Garage unless
# S3MOUNT_TEST_ENDPOINT names another endpoint.
#
#   scripts/bench-write.sh                          # 1 GiB object, 3 runs, 20 ms
#   BENCH_OBJECT_MIB=256 BENCH_RUNS=5 scripts/bench-write.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-garage.sh cargo bench --bench write
