#!/usr/bin/env bash
# Builds Shoal's runtime image where no registry is reachable (no base image to pull): FROM scratch with the
# release binary, the shared libraries `ldd` names and a passwd entry for uid 10001, and the same entrypoint,
# command, user, ports and stop signal as docker/Dockerfile's runtime stage. buildah with the vfs storage
# driver, as root, no daemon.
#   usage: docker/build-scratch-image.sh BINARY [IMAGE]      (prints "IMAGE SIZE" last)
set -euo pipefail
binary=$1
image=${2:-localhost/shoal:scratch}
bah() { buildah --storage-driver vfs "$@"; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# Stripped as in the Dockerfile (symbols are most of a static Swift binary's size).
install -D -m 0755 -s "$binary" "$root/usr/bin/shoal"
# The loader and every library the binary links (with --static-swift-stdlib: libc, libm, libstdc++, libgcc_s).
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    cp --parents -L "$lib" "$root"
done
mkdir -p "$root/etc/shoal" "$root/tmp"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nshoal:x:10001:10001:shoal:/nonexistent:/usr/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nshoal:x:10001:\n' > "$root/etc/group"
container=$(bah from scratch)
bah copy "$container" "$root" / >/dev/null
bah config --entrypoint '["/usr/bin/shoal"]' --cmd '["/etc/shoal/pgbouncer.ini"]' --user 10001:10001 \
    --port 6432 --port 9127 --stop-signal SIGTERM --label org.opencontainers.image.title=shoal "$container"
bah commit --rm --quiet "$container" "$image" >/dev/null
echo "$image $(bah images --format '{{.Size}}' "$image") (files: $(du -sb "$root" | cut -f1) bytes)"
