#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg, and checks the installed
# result: `s3mount --version`, the man page renders, the systemd unit passes
# `systemd-analyze verify` (where systemd-analyze exists), and one mount
# through the installed mount(8) helper reads and writes. Removes the
# package again at the end, whatever the outcome.
#
# Needs an S3 endpoint in the environment as scripts/with-garage.sh exports
# it (S3MOUNT_TEST_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY):
#   scripts/with-garage.sh scripts/check-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "check-package: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

: "${S3MOUNT_TEST_ENDPOINT:?run through scripts/with-garage.sh, or export S3MOUNT_TEST_ENDPOINT and credentials}"
[[ $(id -u) -eq 0 ]] || fail "installing a package needs root"

deb=$(scripts/build-deb.sh)
say "built $deb ($(du -h "$deb" | cut -f1))"

work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
# A package installed before this check is replaced, and left installed.
preinstalled=""
[[ $(dpkg-query -W -f='${Status}' s3mount 2>/dev/null || true) == "install ok installed" ]] && preinstalled=1
cleanup() {
    umount -l "$mnt" 2>/dev/null || true
    [[ -n $preinstalled ]] || dpkg --purge s3mount >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
[[ $(command -v s3mount) == /usr/bin/s3mount ]] || fail "s3mount is not /usr/bin/s3mount after installing"
s3mount --version | grep -q '^s3mount ' || fail "s3mount --version"
say "$(s3mount --version)"
manual=$(man -P cat s3mount 2>/dev/null) || fail "man s3mount"
grep -q -- '--metadata-ttl' <<<"$manual" || fail "man s3mount does not render the options"
[[ -x /sbin/mount.fuse.s3mount ]] || fail "/sbin/mount.fuse.s3mount is missing"
[[ -s /usr/share/bash-completion/completions/s3mount ]] || fail "bash completion missing"

if command -v systemd-analyze >/dev/null; then
    units="$work/units"
    mkdir -p "$units" /etc/s3mount
    env_created=""
    if [[ ! -e /etc/s3mount/mnt-check.env ]]; then
        touch /etc/s3mount/mnt-check.env
        env_created=1
    fi
    ln -s /lib/systemd/system/s3mount@.service "$units/s3mount@mnt-check.service"
    out=$(systemd-analyze verify "$units/s3mount@mnt-check.service" 2>&1) || {
        [[ -n $env_created ]] && rm -f /etc/s3mount/mnt-check.env
        fail "systemd-analyze verify: $out"
    }
    [[ -n $env_created ]] && rm -f /etc/s3mount/mnt-check.env
    say "systemd-analyze verify: unit ok"
else
    say "systemd-analyze is not installed; unit file not verified"
fi

bucket="pkg-check-$$"
env_file="$work/creds.env"
cat >"$env_file" <<EOT
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_REGION=${AWS_REGION:-us-east-1}
EOT
# Credentials are for this user only (s3mount warns otherwise).
chmod 600 "$env_file"
# Create the bucket through the mount's own endpoint with the AWS CLI if it
# exists, else with python's boto3-free path: s3mount needs an existing bucket.
python3 - "$bucket" <<'PY'
import hashlib, hmac, os, sys, datetime, urllib.request
bucket = sys.argv[1]
endpoint = os.environ["S3MOUNT_TEST_ENDPOINT"].rstrip("/")
key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
region = os.environ.get("AWS_REGION", "us-east-1")
host = endpoint.split("://", 1)[1]
now = datetime.datetime.now(datetime.timezone.utc)
amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
payload = hashlib.sha256(b"").hexdigest()
canonical = f"PUT\n/{bucket}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}"
scope = f"{day}/{region}/s3/aws4_request"
to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
k = ("AWS4" + secret).encode()
for part in (day, region, "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT", headers={
    "x-amz-date": amz_date, "x-amz-content-sha256": payload,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"})
urllib.request.urlopen(req).read()
PY
# mount(8) runs the installed helper; credentials come only from env_file.
env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_ENDPOINT_URL \
    mount -t fuse.s3mount "$bucket/pkg" "$mnt" \
    -o "endpoint_url=$S3MOUNT_TEST_ENDPOINT,env_file=$env_file,_netdev,nofail,cache_dir=$work/cache" \
    || fail "mount -t fuse.s3mount through the installed helper"
findmnt -n -o FSTYPE "$mnt" | grep -qx fuse.s3mount || fail "mounted, but not as fuse.s3mount"
echo "written through the packaged mount" >"$mnt/hello.txt"
[[ $(cat "$mnt/hello.txt") == "written through the packaged mount" ]] || fail "read back through the mount"
umount "$mnt" || fail "umount"
findmnt "$mnt" >/dev/null && fail "still mounted after umount"
say "ok: installed, man page renders, mounted through /sbin/mount.fuse.s3mount, wrote and read a file, unmounted"
