#!/usr/bin/env bash
# The README's test command: set-up (idempotent, cached), then the whole test suite.
# Snapshots are checked, never written: a missing or changed snapshot fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every pinned Kubernetes version: the matrix test runs install and both faults on each.
./ci/setup.sh --kubernetes all
# The HTML report's test renders it in a real browser.
. ci/lib.sh
LOG_TAG=test
if ! command -v chromium >/dev/null 2>&1; then apt_install chromium; fi

# The container PostgreSQL provider's tests need a Docker engine and an image. Without a
# registry, the image is lily-e2e's own, built from Debian packages (cached in the engine);
# set LILY_E2E_POSTGRES_IMAGE to use another (e.g. postgres:15-alpine where pulls work).
# If no engine can run, the container and kind tests are skipped and say why.
if ./ci/docker.sh; then
  if [ -z "${LILY_E2E_POSTGRES_IMAGE:-}" ]; then
    ./ci/postgres-image.sh
    export LILY_E2E_POSTGRES_IMAGE=lily-e2e/postgres:15-bookworm
  fi
  export LILY_E2E_TEST_POSTGRES="${LILY_E2E_TEST_POSTGRES:-local,container}"
  # The kind provider's tests: the kind set of tools and lily-e2e's node image (cached by its
  # recipe). Where an engine runs, a node image that cannot be built fails the run.
  ./ci/node-image.sh
  # The scenarios on kind run the chart's pod from lily-e2e's stand-in Lily image.
  ./ci/lily-image.sh
  export LILY_E2E_TEST_KIND=1
else
  echo "[test] no docker engine could be started (see above): the container provider's and the kind provider's tests are skipped" >&2
fi

export CI=true INSTA_UPDATE=no
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@"
