#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts one private Garage
# for the run (unless S3MOUNT_TEST_ENDPOINT names another S3 endpoint), runs
# every unit and integration test, and stops Garage again.
#
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh

if [[ -z ${S3MOUNT_TEST_ENDPOINT:-} ]]; then
    garage_dir=$(mktemp -d /tmp/s3mount-garage.XXXXXX)
    trap 'scripts/garage-local.sh stop "$garage_dir"; rm -rf "$garage_dir"' EXIT
    eval "$(scripts/garage-local.sh start "$garage_dir")"
    echo "test.sh: local Garage at $S3MOUNT_TEST_ENDPOINT" >&2
fi

cargo nextest run --no-fail-fast "$@"
