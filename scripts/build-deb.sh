#!/usr/bin/env bash
# Builds the Debian package: the binary, the mount(8) helper, the systemd
# unit template, a man page and shell completions generated from the CLI
# definition. Uses only dpkg-deb (no cargo-deb to install).
#
#   scripts/build-deb.sh [OUTPUT_DIR]      (default: target/debian)
#
# S3MOUNT_DEB_PROFILE=release (default) or another cargo profile.
set -euo pipefail
cd "$(dirname "$0")/.."
# dpkg-deb refuses control directories that are not 0755.
umask 022
export PATH="$HOME/.cargo/bin:$PATH"

out_dir=${1:-target/debian}
profile=${S3MOUNT_DEB_PROFILE:-release}
case $profile in
    dev | debug) cargo build --bin s3mount; bin=target/debug/s3mount ;;
    *) cargo build --profile "$profile" --bin s3mount; bin=target/$profile/s3mount ;;
esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
completions=$(mktemp -d)
trap 'rm -rf "$stage" "$completions"' EXIT
chmod 755 "$stage"

install -D -m 755 "$bin" "$stage/usr/bin/s3mount"
strip --strip-debug "$stage/usr/bin/s3mount" 2>/dev/null || true
# mount(8) looks for /sbin/mount.<type>; the binary acts as the helper when
# called by that name.
mkdir -p "$stage/sbin"
ln -s /usr/bin/s3mount "$stage/sbin/mount.fuse.s3mount"
install -D -m 644 packaging/s3mount@.service "$stage/lib/systemd/system/s3mount@.service"
install -D -m 644 packaging/example.env "$stage/usr/share/doc/s3mount/examples/example.env"
install -D -m 644 README.md "$stage/usr/share/doc/s3mount/README.md"
for doc in docs/*.md; do
    install -D -m 644 "$doc" "$stage/usr/share/doc/s3mount/$(basename "$doc")"
done

"$bin" __generate man "$stage/usr/share/man/man1"
gzip -9n "$stage/usr/share/man/man1/s3mount.1"
"$bin" __generate completions "$completions"
install -D -m 644 "$completions/s3mount.bash" "$stage/usr/share/bash-completion/completions/s3mount"
install -D -m 644 "$completions/_s3mount" "$stage/usr/share/zsh/vendor-completions/_s3mount"
install -D -m 644 "$completions/s3mount.fish" "$stage/usr/share/fish/vendor_completions.d/s3mount.fish"

installed_kb=$(du -sk "$stage" | cut -f1)
# The newest glibc symbol version the binary needs is the libc6 it depends on.
glibc=$(objdump -T "$stage/usr/bin/s3mount" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1 || true)
libc_dep="libc6${glibc:+ (>= $glibc)}"
mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<EOF
Package: s3mount
Version: $version
Architecture: $arch
Maintainer: s3mount developers <s3mount@localhost>
Installed-Size: $installed_kb
Depends: fuse3, $libc_dep
Recommends: ca-certificates
Section: utils
Priority: optional
Homepage: https://github.com/s3mount/s3mount
Description: mount an S3 bucket or prefix as a local filesystem
 s3mount is a FUSE daemon that shows the objects under an S3 prefix as files
 and directories: listings cached on disk and in memory, parallel ranged
 reads that resume broken connections, and writes for drop-folder pipelines.
 Includes the mount.fuse.s3mount helper for fstab and a systemd unit template.
EOF
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
EOF
cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
EOF
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"

mkdir -p "$out_dir"
deb="$out_dir/s3mount_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
