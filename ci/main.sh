#!/usr/bin/env bash
# The README's main job: set-up (idempotent, cached), then the conformance suite on the
# embedded local cluster, with a JUnit report.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
exec ./target/debug/lily-e2e suite --junit target/lily-e2e/junit.xml --artifacts target/lily-e2e/artifacts "$@"
