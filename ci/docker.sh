#!/usr/bin/env bash
# A Docker engine for the container providers, idempotently:
# - installs Debian's docker.io if dockerd is missing (root only; otherwise says how);
# - if no engine answers on DOCKER_HOST (or /var/run/docker.sock), starts dockerd in the
#   background with published ports bound to 127.0.0.1 only, its log in
#   $LILY_E2E_CACHE/dockerd.log, and waits (up to 60 s) until it answers;
# - exits non-zero, with the reason and the end of dockerd's log, if it cannot.
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

if engine_answers; then
  log "engine answers: $(docker version --format '{{.Server.Version}}')"
  exit 0
fi

if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]; then
  log "DOCKER_HOST=${DOCKER_HOST} does not answer; not starting a local engine for another address"
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  log "no engine answers and dockerd needs root to start; start it with: sudo dockerd --ip 127.0.0.1 &"
  exit 1
fi

# A daemon of ours from an earlier run that no longer answers: stop it first.
pidfile=/var/run/docker.pid
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "dockerd $(cat "$pidfile") runs but does not answer; stopping it"
  kill -TERM "$(cat "$pidfile")" || true
  for _ in $(seq 1 20); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.5; done
fi

log "starting dockerd (log: $cache/dockerd.log)"
# Its own session, so that it outlives this script and the job that ran it.
setsid dockerd --host unix:///var/run/docker.sock --ip 127.0.0.1 >"$cache/dockerd.log" 2>&1 < /dev/null &
dockerd_pid=$!

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
