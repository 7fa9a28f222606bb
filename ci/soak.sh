#!/usr/bin/env bash
# Soak (numbers to read, never asserted by tests): starts local clusters back to back, K at
# a time, each `lily-e2e cluster exec --nodes 1 --zones 1 -- true`, and counts runs,
# failures and port collisions ("address already in use": a start retried on a fresh
# port, or a failed one), in what each run printed and in the logs a failed run keeps.
# At the end nothing of these runs may be left running.
#
# Usage: ci/soak.sh [RUNS [PARALLEL]]   (default: 30 runs, 3 at a time)
# Needs the pinned tools (./ci/setup.sh installs them); builds the binary itself, or runs
# the one LILY_E2E_BIN names (an older build, to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_TAG=soak
. ci/lib.sh

runs=${1:-30}
par=${2:-3}
if [ -n "${LILY_E2E_BIN:-}" ]; then
  bin=$LILY_E2E_BIN
else
  cargo build -q -p lily-e2e --bin lily-e2e
  bin=$PWD/target/debug/lily-e2e
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/lily-e2e-soak.XXXXXX")
# A registry of the soak's own, so the final `clean` touches only its runs.
export LILY_E2E_RUNS=$out/registry
export bin out
log "$runs runs, $par at a time; output in $out"

one() {
  local i=$1 s e rc=0
  s=$(date +%s.%N)
  "$bin" cluster exec --nodes 1 --zones 1 -- true >"$out/run-$i.log" 2>&1 || rc=$?
  e=$(date +%s.%N)
  awk -v i="$i" -v rc="$rc" -v a="$s" -v b="$e" 'BEGIN { printf "%s %s %.2f\n", i, rc, b - a }' >"$out/run-$i.result"
}
export -f one
started=$(date +%s.%N)
seq "$runs" | xargs -P "$par" -I{} bash -c 'one {}'
ended=$(date +%s.%N)

cat "$out"/run-*.result >"$out/results"
failed=$(awk '$2 != 0' "$out/results" | wc -l)
# A collision either was retried (the harness warns, and the run goes on) or failed the run;
# a failed run keeps its logs, which are searched too.
retried=$(cat "$out"/run-*.log | grep -c "address already in use; retrying" || true)
kept=$(sed -n 's/.*logs kept in \([^ ]*\).*/\1/p' "$out"/run-*.log | sort -u)
in_kept=0
for d in $kept; do
  n=$(cat "$d"/logs/*.log 2>/dev/null | grep -c "address already in use" || true)
  in_kept=$((in_kept + n))
done
failed_busy=0
for i in $(awk '$2 != 0 { print $1 }' "$out/results"); do
  if grep -q "already in use" "$out/run-$i.log"; then failed_busy=$((failed_busy + 1)); fi
done

# Nothing of these runs may be left: no process carries one of their run ids.
ids=$(grep -ohE 'lily-e2e-r[0-9a-f]{8}' "$out"/run-*.log | sed 's/^lily-e2e-//' | sort -u | paste -sd'|')
left=0
if [ -n "$ids" ]; then
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qxE "LILY_E2E_RUN_ID=($ids)"; then
      log "left running: pid ${p#/proc/} ($(cat "$p/comm" 2>/dev/null))"
      left=$((left + 1))
    fi
  done
fi
"$bin" clean >/dev/null 2>&1 || true

awk '{ print $3 }' "$out/results" | sort -n | awk -v n="$runs" -v f="$failed" -v p="$par" -v w="$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')" '
  { t[NR] = $1 }
  END { printf "soak: %d runs, %d at a time, %d failed, %ss in all; run time min %.2fs median %.2fs max %.2fs\n", n, p, f, w, t[1], t[int((NR + 1) / 2)], t[NR] }'
echo "soak: port collisions: $retried retried on a fresh port, $failed_busy failed runs over a busy port, $in_kept in kept logs"
echo "soak: processes left running: $left"
if [ "$failed" -gt 0 ] || [ "$retried" -gt 0 ] || [ "$left" -gt 0 ]; then
  awk '$2 != 0 { print "  run " $1 " failed (exit " $2 "): see '"$out"'/run-" $1 ".log" }' "$out/results"
  echo "soak: output kept in $out"
else
  rm -rf "$out"
fi
