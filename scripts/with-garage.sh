#!/usr/bin/env bash
# Runs a command against a private Garage S3 server: installs what is needed,
# starts Garage on free loopback ports (unless S3MOUNT_TEST_ENDPOINT already
# names an S3 endpoint), exports how to reach it, runs the command, and stops
# Garage again whatever the command's outcome.
#
#   scripts/with-garage.sh COMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh

if [[ -z ${S3MOUNT_TEST_ENDPOINT:-} ]]; then
    garage_dir=$(mktemp -d /tmp/s3mount-garage.XXXXXX)
    trap 'scripts/garage-local.sh stop "$garage_dir"; rm -rf "$garage_dir"' EXIT
    env_lines=$(scripts/garage-local.sh start "$garage_dir") || {
        echo "with-garage: could not start the local Garage (see above)" >&2
        exit 1
    }
    eval "$env_lines"
    echo "with-garage: local Garage at $S3MOUNT_TEST_ENDPOINT" >&2
fi

"$@"
