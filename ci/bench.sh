#!/usr/bin/env bash
# Benchmarks (numbers to read, never asserted by tests):
#  1. the local cluster: cold start to 3 nodes Ready, teardown, peak RSS of the control
#     plane, min/median/max over 10 runs, on each pinned Kubernetes version that is built;
#  1b. kind next to local where a Docker engine runs: start to every node Ready, teardown,
#     median of 3 (1 control plane + 2 workers against 2 simulated nodes);
#  2. PostgreSQL providers, start to ready (local, and container when ci/docker.sh has an
#     engine), runs interleaved, median of 5;
#  3. the whole conformance suite's wall time, cluster start included, median of 5
#     (SUITE_RUNS).
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
bin=./target/debug/lily-e2e
for v in $("$bin" tools list | awk '$1 == "kube-apiserver" {print $2} $1 == "kubernetes" && $NF == "installed" {print $3}'); do
  echo "== local cluster, Kubernetes $v, 10 runs"
  "$bin" bench cluster --runs 10 --kubernetes "$v"
done
if ./ci/docker.sh && ./ci/node-image.sh; then
  echo "== kind (1 control plane + 2 workers) next to the local cluster (2 nodes), 3 runs each, interleaved"
  "$bin" bench cluster --providers local,kind --nodes 2 --runs 3
fi
if ./ci/docker.sh && ./ci/postgres-image.sh; then
  echo "== postgres providers, 5 runs each"
  LILY_E2E_POSTGRES_IMAGE="${LILY_E2E_POSTGRES_IMAGE:-lily-e2e/postgres:15-bookworm}" "$bin" bench postgres --providers local,container --runs 5
else
  echo "== postgres provider (local only: no docker engine), 5 runs"
  "$bin" bench postgres --providers local --runs 5
fi
runs=${SUITE_RUNS:-5}
echo "== suite wall time, $runs runs"
times=()
for i in $(seq 1 "$runs"); do
  s=$(date +%s.%N)
  "$bin" suite --junit "target/lily-e2e/bench-junit-$i.xml" >"target/lily-e2e/bench-suite-$i.log" 2>&1 || { echo "suite run $i failed: see target/lily-e2e/bench-suite-$i.log"; exit 1; }
  e=$(date +%s.%N)
  t=$(awk -v a="$s" -v b="$e" 'BEGIN{printf "%.1f", b-a}')
  times+=("$t")
  echo "run $i: ${t}s"
  grep -E '^(PASS|FAIL|ERROR|SKIP) ' "target/lily-e2e/bench-suite-$i.log" | sed 's/^/  /'
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "suite wall time: min %.1fs median %.1fs max %.1fs\n", a[1], a[int((NR+1)/2)], a[NR]}'
