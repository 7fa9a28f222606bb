#!/usr/bin/env bash
# Builds lily-e2e's stand-in Lily image, once, into the Docker engine: `lily-e2e/lily:standin`.
#
# Kind clusters here pull no upstream image, and a real Lily needs the Filecoin network; this
# image carries the stand-in `lily` of ci/lily-standin (see its src/main.rs: what it does and
# does not do) on a small Debian root that has the coreutils and /bin/sh the chart's init
# scripts use. The image carries the hash of its recipe (this script, the crate's manifest
# and sources, the workspace's Cargo.toml and Cargo.lock) in the label `io.lily-e2e.recipe`;
# it is rebuilt only when that hash changes.
#
# Recipe: `cargo build -p lily-standin` in the dev profile (its dependencies are built at
# opt-level 1 and shared with `cargo test -p lily-standin`, so the build takes seconds where
# --release would rebuild every dependency), the binary stripped; debootstrap (minbase) of
# bookworm with ca-certificates, docs, locales and caches trimmed; the binary at
# /usr/local/bin/lily; /var/lib/lily; then `docker import` with PATH, the labels
# (io.lily-e2e.recipe, io.lily-e2e.standin=true) and CMD ["lily","daemon"].
#
# Needs root (debootstrap, chroot) and a Docker engine (ci/docker.sh). Prints the build time
# and the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=lily-image
. ci/lib.sh

image=lily-e2e/lily:standin
suite=bookworm
mirror="${LILY_E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${LILY_E2E_CACHE:-$HOME/.cache/lily-e2e}"
recipe=$( {
  cat ci/lily-image.sh Cargo.toml Cargo.lock
  find ci/lily-standin/Cargo.toml ci/lily-standin/src -type f | LC_ALL=C sort | xargs sha256sum
} | sha256sum | cut -c1-16)

[ "$(id -u)" -eq 0 ] || { log "building the lily image needs root (debootstrap, chroot)"; exit 1; }
./ci/docker.sh

have=$(docker image inspect --format '{{ index .Config.Labels "io.lily-e2e.recipe" }}' "$image" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  log "$image is current (recipe $recipe)"
  exit 0
fi
[ -z "$have" ] && log "building $image (recipe $recipe)" || log "rebuilding $image: recipe $have -> $recipe"
start=$(date +%s)

command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap

work=$(mktemp -d /tmp/lily-e2e-lily-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

log "cargo build -p lily-standin (dev profile)"
cargo build --locked -p lily-standin --bin lily >&2
bin=target/debug/lily

debs="$cache/debootstrap/$suite"
mkdir -p "$debs"
log "debootstrap $suite into $rootfs"
debootstrap --variant=minbase --cache-dir="$debs" --include=ca-certificates "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  log "debootstrap failed; the end of its log:"; tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* "$rootfs"/tmp/*

install -m 0755 -s "$bin" "$rootfs/usr/local/bin/lily"
install -d -m 0755 "$rootfs/var/lib/lily"
# The binary was linked on this machine: it must run on the image's libc.
chroot "$rootfs" /usr/local/bin/lily --version >/dev/null || { log "the stand-in does not run in the $suite root"; exit 1; }

log "importing $image"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL io.lily-e2e.recipe=$recipe" \
  --change 'LABEL io.lily-e2e.standin=true' \
  --change 'EXPOSE 1234 1347' \
  --change 'CMD ["lily","daemon"]' \
  - "$image" >/dev/null

size=$(docker image inspect --format '{{.Size}}' "$image")
log "built $image in $(( $(date +%s) - start ))s, $(( size / 1024 / 1024 )) MiB"
