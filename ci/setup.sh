#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages, the lily-e2e binary, pinned tools.
# Everything is cached: a second run does (almost) nothing. Arguments go to `lily-e2e tools
# install` (e.g. `--kubernetes all` also builds every other pinned Kubernetes version).
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=setup
. ci/lib.sh

# System packages (Debian): PostgreSQL server binaries for the local Postgres provider.
need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
  # Debian starts a cluster on install; the harness runs its own servers.
  command -v pg_ctlcluster >/dev/null 2>&1 && { service postgresql stop >/dev/null 2>&1 || true; }
fi

command -v cargo >/dev/null 2>&1 || { log "cargo is not installed; install Rust (rustup) first"; exit 1; }
# The pinned tools are built with Go; Kubernetes 1.34 needs Go 1.24 or newer (Debian's
# golang-go is older, so it is not installed from apt).
go_minor=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -z "$go_minor" ] || [ "$go_minor" -lt 24 ]; then
  log "Go 1.24 or newer is needed to build the pinned tools (found: $(go env GOVERSION 2>/dev/null || echo none))"
  exit 1
fi

log "building lily-e2e"
cargo build -q -p lily-e2e --bin lily-e2e

log "installing pinned tools (cached under ${LILY_E2E_CACHE:-$HOME/.cache/lily-e2e}/tools)"
./target/debug/lily-e2e tools install "$@"
