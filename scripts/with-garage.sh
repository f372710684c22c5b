#!/usr/bin/env bash
# Runs a command against private local S3 servers: installs what is needed,
# starts Garage on free loopback ports (unless S3MOUNT_TEST_ENDPOINT already
# names an S3 endpoint) and SeaweedFS, the server that enforces conditional
# writes, on others (unless S3MOUNT_TEST_CONDITIONAL_ENDPOINT already names
# one), exports how to reach each (AWS_* and S3MOUNT_TEST_ENDPOINT for Garage,
# S3MOUNT_TEST_CONDITIONAL_* for SeaweedFS), runs the command, and stops both
# again whatever the command's outcome.
#
#   scripts/with-garage.sh COMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh

garage_dir="" seaweed_dir=""
cleanup() {
    if [[ -n $seaweed_dir ]]; then
        scripts/seaweedfs-local.sh stop "$seaweed_dir" || true
        rm -rf "$seaweed_dir"
    fi
    if [[ -n $garage_dir ]]; then
        scripts/garage-local.sh stop "$garage_dir" || true
        rm -rf "$garage_dir"
    fi
}
trap cleanup EXIT

if [[ -z ${S3MOUNT_TEST_ENDPOINT:-} ]]; then
    garage_dir=$(mktemp -d /tmp/s3mount-garage.XXXXXX)
    env_lines=$(scripts/garage-local.sh start "$garage_dir") || {
        echo "with-garage: could not start the local Garage (see above)" >&2
        exit 1
    }
    eval "$env_lines"
    echo "with-garage: local Garage at $S3MOUNT_TEST_ENDPOINT" >&2
fi

if [[ -z ${S3MOUNT_TEST_CONDITIONAL_ENDPOINT:-} ]]; then
    seaweed_dir=$(mktemp -d /tmp/s3mount-seaweedfs.XXXXXX)
    env_lines=$(scripts/seaweedfs-local.sh start "$seaweed_dir") || {
        echo "with-garage: could not start the local SeaweedFS (see above)" >&2
        exit 1
    }
    eval "$env_lines"
    echo "with-garage: local SeaweedFS at $S3MOUNT_TEST_CONDITIONAL_ENDPOINT" >&2
fi

"$@"
