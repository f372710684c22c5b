#!/usr/bin/env bash
# Starts or stops a private single-node Garage S3 server on loopback.
#
#   scripts/garage-local.sh start DIR   # prints shell exports to reach it (also saved in DIR/env)
#   scripts/garage-local.sh stop DIR
#
# Each instance lives entirely in DIR (config, data, metadata, log, pid) on
# free loopback ports, so several can run side by side and deleting DIR after
# `stop` removes every trace. Needs the `garage` binary (scripts/install-deps.sh).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
GARAGE=${GARAGE:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

stop() {
    if [[ -f $dir/garage.pid ]]; then
        pid=$(cat "$dir/garage.pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/garage.pid"
    fi
}

start() {
    if [[ ! -x $GARAGE ]]; then
        echo "garage-local: the garage binary is missing; run scripts/install-deps.sh" >&2
        exit 1
    fi
    mkdir -p "$dir/meta" "$dir/data"
    dir=$(cd "$dir" && pwd)
    local rpc_port s3_port
    rpc_port=$(free_port)
    s3_port=$(free_port)
    cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
TOML
    chmod 600 "$dir/garage.toml"
    local g=("$GARAGE" -c "$dir/garage.toml")
    RUST_LOG=${GARAGE_LOG:-warn} setsid "${g[@]}" server > "$dir/garage.log" 2>&1 &
    echo $! > "$dir/garage.pid"
    # The node answers once its RPC port accepts connections and `status`
    # succeeds (`node id` alone can answer before the server listens).
    local node="" up=""
    for _ in $(seq 150); do
        if ! kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
            echo "garage-local: garage server exited; see $dir/garage.log:" >&2
            tail -5 "$dir/garage.log" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$rpc_port") 2>/dev/null \
            && "${g[@]}" status > /dev/null 2>&1 \
            && node=$("${g[@]}" node id -q 2>/dev/null); then
            up=1
            break
        fi
        sleep 0.2
    done
    if [[ -z $up || -z $node ]]; then
        echo "garage-local: garage did not start within 30s; see $dir/garage.log" >&2
        stop
        exit 1
    fi
    retry() {
        for _ in $(seq 25); do
            if "$@" > /dev/null 2>&1; then return 0; fi
            sleep 0.2
        done
        "$@" > /dev/null
    }
    retry "${g[@]}" layout assign -z dc1 -c 10G "${node%%@*}"
    retry "${g[@]}" layout apply --version 1
    local key_id="GK$(hex 12)" secret
    secret=$(hex 32)
    retry "${g[@]}" key import --yes -n s3mount-test "$key_id" "$secret"
    retry "${g[@]}" key allow --create-bucket "$key_id"
    # The S3 port answers once the layout is live.
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; then break; fi
        sleep 0.2
    done
    cat > "$dir/env" <<ENV
export S3MOUNT_TEST_ENDPOINT=http://127.0.0.1:$s3_port
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
ENV
    cat "$dir/env"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
