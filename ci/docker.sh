#!/usr/bin/env bash
# A Docker engine for the container providers, idempotently:
# - installs Debian's docker.io if dockerd is missing (root only; otherwise says how);
# - if no engine answers on DOCKER_HOST (or /var/run/docker.sock), starts dockerd in the
#   background with published ports bound to 127.0.0.1 only, its log in
#   $LILY_E2E_CACHE/dockerd.log, and waits (up to 60 s) until it answers;
# - exits non-zero, with the reason and the end of dockerd's log, if it cannot.
#
# Privileged containers (kind's nodes) where the capability bounding set is short: `docker
# run --privileged` asks runc for every capability the kernel knows, and runc cannot grant one
# outside its own bounding set ("unable to apply caps: operation not permitted"). Some
# sandboxes run without CAP_SYS_RESOURCE, say. This script detects that (CapBnd against
# /proc/sys/kernel/cap_last_cap) and then starts dockerd with the project's OCI runtime
# wrapper, ci/runc-caps, as its default runtime: it drops from each container's capabilities
# (create/run: the bundle's config.json; exec: the --process file) those outside its own
# bounding set, then runs the real runc unchanged. Nothing changes on a normal host.
# An engine of ours that answers without the wrapper where it is needed is restarted.
#
# Used by ci/test.sh and ci/postgres-image.sh. Safe to run again: an answering engine is
# left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=docker
. ci/lib.sh
cache="${LILY_E2E_CACHE:-$HOME/.cache/lily-e2e}"
mkdir -p "$cache"

engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  apt_install docker.io
fi

# The bounding set: short when it lacks a capability the kernel knows.
last_cap=$(cat /proc/sys/kernel/cap_last_cap 2>/dev/null || echo 40)
bnd=$((16#$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)))
full=$(( (1 << (last_cap + 1)) - 1 ))
wrapper_runtime=lily-e2e-runc
short_caps=""
if [ $(( bnd & full )) -ne "$full" ]; then
  for bit in $(seq 0 "$last_cap"); do
    [ $(( (bnd >> bit) & 1 )) -eq 1 ] || short_caps+=" $bit"
  done
fi

# The wrapper, built from this checkout (cached by its source hash).
wrapper_path() {
  local src hash bin
  src=$(cat ci/runc-caps/Cargo.toml ci/runc-caps/src/*.rs | sha256sum | cut -c1-16)
  bin="$cache/bin/runc-caps-$src"
  if [ ! -x "$bin" ]; then
    log "building the OCI runtime wrapper (ci/runc-caps)"
    cargo build -q --release -p runc-caps >&2
    mkdir -p "$cache/bin"
    install -m 0755 target/release/runc-caps "$bin"
  fi
  echo "$bin"
}

default_runtime() { docker info --format '{{.DefaultRuntime}}' 2>/dev/null || true; }

if engine_answers; then
  if [ -n "$short_caps" ] && [ "$(default_runtime)" != "$wrapper_runtime" ]; then
    pidfile=/var/run/docker.pid
    if [ -s "$pidfile" ] && [ -f "$cache/dockerd.ours" ] && [ "$(cat "$cache/dockerd.ours")" = "$(cat "$pidfile")" ]; then
      log "the engine runs without the runtime wrapper this machine needs (capabilities missing from the bounding set:$short_caps); restarting it"
    else
      log "engine answers: $(docker version --format '{{.Server.Version}}'), but its default runtime is $(default_runtime), not $wrapper_runtime: privileged containers (kind) will fail here (capabilities missing from the bounding set:$short_caps); it is not ours to restart"
      exit 0
    fi
  else
    log "engine answers: $(docker version --format '{{.Server.Version}}') (default runtime $(default_runtime))"
    exit 0
  fi
fi

if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]; then
  log "DOCKER_HOST=${DOCKER_HOST} does not answer; not starting a local engine for another address"
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  log "no engine answers and dockerd needs root to start; start it with: sudo dockerd --ip 127.0.0.1 &"
  exit 1
fi

# A daemon from an earlier run that no longer answers, or ours without the wrapper: stop it
# first (its containers stop with it), up to 30 s.
pidfile=/var/run/docker.pid
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  old=$(cat "$pidfile")
  log "stopping dockerd $old"
  kill -TERM "$old" || true
  for _ in $(seq 1 60); do kill -0 "$old" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$old" 2>/dev/null; then
    log "dockerd $old did not stop within 30s after TERM; stop it (kill $old) and run this again"
    exit 1
  fi
fi

runtime_args=()
if [ -n "$short_caps" ]; then
  wrapper=$(wrapper_path)
  runtime_args=(--add-runtime "$wrapper_runtime=$wrapper" --default-runtime "$wrapper_runtime")
  log "the capability bounding set lacks capability number(s)$short_caps: default runtime $wrapper_runtime ($wrapper)"
fi
log "starting dockerd (log: $cache/dockerd.log)"
# Its own session, so that it outlives this script and the job that ran it.
setsid dockerd --host unix:///var/run/docker.sock --ip 127.0.0.1 "${runtime_args[@]}" >"$cache/dockerd.log" 2>&1 < /dev/null &
dockerd_pid=$!
echo "$dockerd_pid" > "$cache/dockerd.ours"

# Readiness: the engine answers. Polled (dockerd has no readiness notification without
# systemd), under a deadline, and given up at once if dockerd exits.
for _ in $(seq 1 120); do
  if engine_answers; then
    log "engine answers: $(docker version --format '{{.Server.Version}}') (pid $dockerd_pid)"
    exit 0
  fi
  if ! kill -0 "$dockerd_pid" 2>/dev/null; then
    log "dockerd exited before answering; the end of its log:"
    tail -n 20 "$cache/dockerd.log" >&2
    exit 1
  fi
  sleep 0.5
done
log "dockerd did not answer within 60s; the end of its log:"
tail -n 20 "$cache/dockerd.log" >&2
exit 1
