#!/usr/bin/env bash
# Builds shoal_<version>_<arch>.deb with dpkg-deb: the binary, the systemd unit, a commented default
# /etc/shoal/shoal.ini (a conffile) and maintainer scripts that create and remove the `shoal` user.
# Usage: packaging/deb/build-deb.sh [BINARY] [OUTPUT_DIR]   (default: a release build of this checkout)
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-}
out=${2:-.}
if [ -z "$binary" ]; then
    # Static Swift runtime: the package must start on a host with no Swift toolchain.
    swift build -c release --static-swift-stdlib --product shoal --scratch-path .build-release >/dev/null
    binary=.build-release/release/shoal
fi
# Only the system libraries `Depends:` names below may be linked dynamically (a binary built without
# --static-swift-stdlib needs libswiftCore.so and friends, which no Debian host has).
unexpected=$(ldd "$binary" | awk '{print $1}' | grep -v -E '^(linux-vdso\.so|/lib64/ld-linux|ld-linux|libc\.so|libm\.so|libstdc\+\+\.so|libgcc_s\.so)' || true)
if [ -n "$unexpected" ]; then
    echo "build-deb.sh: $binary links libraries the package cannot depend on: $(echo $unexpected)" >&2
    echo "build it with: swift build -c release --static-swift-stdlib --product shoal" >&2
    exit 1
fi
version=$("$binary" --version | grep -m1 -o 'Shoal [0-9][0-9.]*' | awk '{print $2}')
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# Stripped, as in the image: symbols are about 45% of a static Swift binary.
install -D -m 0755 -s "$binary" "$root/usr/bin/shoal"
install -D -m 0644 conf/shoal.service "$root/lib/systemd/system/shoal.service"
# shoal@.service, for a restart that refuses nobody (so_reuseport = 1 in shoal.ini): `systemctl start shoal@green`,
# then `systemctl stop shoal@blue` (SIGTERM: it drains). Made from the same unit, so the two never drift apart;
# the runtime directory (the Unix socket's) must outlive whichever instance stops first.
sed -e 's/^Description=.*/& (instance %i)/' -e '/^RuntimeDirectoryMode=/a RuntimeDirectoryPreserve=yes' \
    conf/shoal.service > "$root/lib/systemd/system/shoal@.service"
chmod 0644 "$root/lib/systemd/system/shoal@.service"
install -D -m 0644 packaging/deb/60-shoal.conf "$root/usr/lib/sysctl.d/60-shoal.conf"
install -D -m 0640 packaging/deb/shoal.ini "$root/etc/shoal/shoal.ini"
install -D -m 0640 packaging/deb/userlist.txt "$root/etc/shoal/userlist.txt"
install -D -m 0644 conf/examples/moodle-transaction.ini "$root/usr/share/doc/shoal/examples/moodle-transaction.ini"
install -D -m 0644 conf/examples/per-department.ini "$root/usr/share/doc/shoal/examples/per-department.ini"
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: shoal
Version: $version
Architecture: $arch
Maintainer: Shoal developers <shoal@localhost>
Section: database
Priority: optional
Depends: libc6, libstdc++6, libgcc-s1, adduser
Description: PostgreSQL connection pooler, a drop-in for PgBouncer
 Shoal reads pgbouncer.ini and userlist.txt, serves PgBouncer's admin console,
 pools in session, transaction and statement modes and keeps session state
 (held cursors, advisory locks, temp tables) safe under transaction pooling.
CONTROL
printf '/etc/shoal/shoal.ini\n/etc/shoal/userlist.txt\n' > "$root/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
dpkg-deb --root-owner-group --build "$root" "$out/shoal_${version}_${arch}.deb" >/dev/null
echo "$out/shoal_${version}_${arch}.deb"
