#!/usr/bin/env bash
# Builds lily-e2e's PostgreSQL image from Debian packages only, once, into the Docker
# engine: `lily-e2e/postgres:15-bookworm`.
#
# It starts like the official `postgres` image (see ci/postgres-image/entrypoint.sh), so
# testcontainers' Postgres module works with only its name and tag overridden. The image
# carries the hash of its recipe (this script and the entrypoint) in the label
# `io.lily-e2e.recipe`; it is rebuilt only when that hash changes.
#
# Recipe: debootstrap (minbase) of bookworm with postgresql-15, ca-certificates and openssl;
# docs, locales and caches trimmed; Debian's default cluster removed; the entrypoint; then
# `docker import` with PATH, PGDATA, ENTRYPOINT and CMD set.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=postgres-image
. ci/lib.sh

image=lily-e2e/postgres:15-bookworm
suite=bookworm
mirror="${LILY_E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
recipe=$(cat ci/postgres-image.sh ci/postgres-image/entrypoint.sh | sha256sum | cut -c1-16)

./ci/docker.sh

have=$(docker image inspect --format '{{ index .Config.Labels "io.lily-e2e.recipe" }}' "$image" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  log "$image is current (recipe $recipe)"
  exit 0
fi
[ -z "$have" ] && log "building $image (recipe $recipe)" || log "rebuilding $image: recipe $have -> $recipe"

command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
[ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }

work=$(mktemp -d /tmp/lily-e2e-postgres-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
start=$(date +%s)

log "debootstrap $suite into $rootfs"
debootstrap --variant=minbase --include=postgresql-15,ca-certificates,openssl \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  log "debootstrap failed; the end of its log:"; tail -n 20 "$work/debootstrap.log" >&2; exit 1; }

# Debian's package made a cluster (15/main) and may have left it running in the chroot.
pkill -f "$rootfs/usr/lib/postgresql" 2>/dev/null || true
rm -rf "$rootfs/etc/postgresql/15/main" "$rootfs/var/lib/postgresql/15"
# Trim what a server does not need.
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* "$rootfs"/tmp/*
install -m 0755 ci/postgres-image/entrypoint.sh "$rootfs/usr/local/bin/docker-entrypoint.sh"
mkdir -p "$rootfs/docker-entrypoint-initdb.d" "$rootfs/var/lib/postgresql/data"
chroot "$rootfs" chown postgres:postgres /var/lib/postgresql/data
chmod 0700 "$rootfs/var/lib/postgresql/data"

log "importing $image"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PGDATA=/var/lib/postgresql/data' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL io.lily-e2e.recipe=$recipe" \
  --change 'EXPOSE 5432' \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["postgres"]' \
  - "$image" >/dev/null

size=$(docker image inspect --format '{{.Size}}' "$image")
log "built $image in $(( $(date +%s) - start ))s, $(( size / 1024 / 1024 )) MiB"
