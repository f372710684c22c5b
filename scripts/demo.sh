#!/usr/bin/env bash
# Try s3mount on this machine: installs what is needed, starts a local Garage
# with sample data (nested directories, a CSV and a Parquet file), and mounts
# it at /tmp/s3mount-demo/mnt. Stop everything with: scripts/demo.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
demo=/tmp/s3mount-demo
mnt=$demo/mnt

if [[ ${1:-} == stop ]]; then
    umount "$mnt" 2> /dev/null || true
    scripts/garage-local.sh stop "$demo/garage"
    echo "demo stopped; remove $demo to forget its data"
    exit 0
fi

scripts/install-deps.sh
cargo build --release --bin s3mount --example s3put

umount "$mnt" 2> /dev/null || true
scripts/garage-local.sh stop "$demo/garage" 2> /dev/null || true
rm -rf "$demo"
mkdir -p "$demo/seed" "$mnt"
eval "$(scripts/garage-local.sh start "$demo/garage")"

seed=$demo/seed
printf 'city,country,population\nTokyo,JP,37400068\nDelhi,IN,28514000\nShanghai,CN,25582000\n' > "$seed/cities.csv"
python3 - "$seed/trips.parquet" <<'PY'
import sys, pyarrow as pa, pyarrow.parquet as pq
n = 10000
table = pa.table({
    "trip_id": list(range(n)),
    "distance_km": [round((i * 7919 % 1000) / 10, 1) for i in range(n)],
    "fare": [round(2.5 + (i * 104729 % 5000) / 100, 2) for i in range(n)],
})
pq.write_table(table, sys.argv[1], row_group_size=2500)
PY
echo "hello from S3" > "$seed/hello.txt"
head -c $((8 * 1024 * 1024)) /dev/urandom > "$seed/random-8MiB.bin"

target/release/examples/s3put "$S3MOUNT_TEST_ENDPOINT" demo \
    hello.txt="$seed/hello.txt" \
    data/csv/cities.csv="$seed/cities.csv" \
    data/parquet/year=2026/trips.parquet="$seed/trips.parquet" \
    data/blobs/random-8MiB.bin="$seed/random-8MiB.bin" \
    empty-folder/= > /dev/null

target/release/s3mount demo "$mnt" --endpoint-url "$S3MOUNT_TEST_ENDPOINT" --force-path-style

cat <<MSG

s3mount is serving bucket 'demo' at $mnt. Try:
  ls -lR $mnt
  cat $mnt/data/csv/cities.csv
  python3 -c "import pyarrow.parquet as pq; print(pq.read_table('$mnt/data/parquet/year=2026/trips.parquet').num_rows)"
  sha256sum $mnt/data/blobs/random-8MiB.bin $seed/random-8MiB.bin
Credentials for other tools are in $demo/garage/env. Stop with: scripts/demo.sh stop
MSG
