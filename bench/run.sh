#!/usr/bin/env bash
# make bench: runs the side-by-side benchmarks and writes docs/BENCHMARKS.md.
#   BENCH_COUNT  repetitions of each benchmark (default 3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
.ci/rig.sh up
examples/demo.sh down # its web holds port 6000
GLR_BIN=$(.ci/rig.sh runner | tail -n1)
export GLR_BIN BERTH_BIN=$root/bin/berth
[ -x "$BERTH_BIN" ] || make build
out=$(mktemp)
trap 'rm -f "$out"' EXIT
count=${BENCH_COUNT:-3}
go test -run '^$' -bench 'Invocation|ComposeHelper' -benchtime 15x -count "$count" ./bench | tee "$out"
go test -run '^$' -bench 'TrivialJob|DeployJob' -benchtime 5x -count "$count" ./bench | tee -a "$out"
go test -run '^$' -bench 'Outage|Release|Rollback' -benchtime 5x -count "$count" ./bench | tee -a "$out"
.ci/kube.sh up >/dev/null
go test -run '^$' -bench 'KubeFailedRollout' -benchtime 3x -count 1 ./bench | tee -a "$out"
go run ./bench/report -title "Benchmarks" <"$out" >docs/BENCHMARKS.md
echo "bench: wrote docs/BENCHMARKS.md"
cat docs/BENCHMARKS.md
