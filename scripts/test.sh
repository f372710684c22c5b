#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts one private Garage
# for the run (unless S3MOUNT_TEST_ENDPOINT names another S3 endpoint), runs
# every unit and integration test, then builds the Debian package, installs
# it and mounts through it (scripts/check-package.sh), and stops Garage again.
#
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-garage.sh bash -c \
    'cargo nextest run --no-fail-fast "$@" && scripts/check-package.sh' test.sh "$@"
