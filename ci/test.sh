#!/usr/bin/env bash
# The README's test command: set-up (idempotent, cached), then the whole test suite.
# Snapshots are checked, never written: a missing or changed snapshot fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
export CI=true INSTA_UPDATE=no
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@"
