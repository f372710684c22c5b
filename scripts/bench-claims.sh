#!/usr/bin/env bash
# Claims benchmark: loaders renaming dropped files on 1 and 3 mounts of a
# SeaweedFS bucket (conditional writes enforced) next to the same moves done
# directly with aws-sdk-s3 without conditions, with S3-like latency injected.
#
#   scripts/bench-claims.sh
#   BENCH_CLAIM_FILES=200 BENCH_RUNS=5 BENCH_LATENCY_MS=20 scripts/bench-claims.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-garage.sh cargo bench --bench claims
