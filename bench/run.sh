#!/usr/bin/env bash
# make bench: runs the side-by-side benchmarks and writes docs/BENCHMARKS.md.
#   BENCH_COUNT      repetitions of each benchmark (default 3)
#   BENCH_JOB_COUNT  repetitions of the whole-job ones, which are cheap and
#                    noisy on 2 cores (default BENCH_COUNT)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
.ci/rig.sh up
examples/demo.sh down # its web holds port 6000
GLR_BIN=$(.ci/rig.sh runner | tail -n1)
export GLR_BIN BERTH_BIN=$root/bin/berth
[ -x "$BERTH_BIN" ] || make build
# berth before the helper container, measured beside it: built once from
# its commit, cached outside the clone
BERTH_BEFORE_REF=${BERTH_BEFORE_REF:-7435b88}
if before_sha=$(git rev-parse --verify -q "$BERTH_BEFORE_REF^{commit}"); then
	before_dir=$HOME/.cache/berth-bench/before-$before_sha
	if [ ! -x "$before_dir/berth" ]; then
		src=$(mktemp -d)
		git archive "$before_sha" | tar -x -C "$src"
		(cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$before_dir/berth" ./cmd/berth)
		rm -rf "$src"
	fi
	export BERTH_BEFORE_BIN=$before_dir/berth
else
	echo "bench: no commit $BERTH_BEFORE_REF here: the helper container's cost is not measured" >&2
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
count=${BENCH_COUNT:-3}
go test -run '^$' -bench 'Invocation|ComposeHelper' -benchtime 15x -count "$count" ./bench | tee "$out"
go test -run '^$' -bench 'TrivialJob|DeployJob' -benchtime 5x -count "${BENCH_JOB_COUNT:-$count}" ./bench | tee -a "$out"
go test -run '^$' -bench '^Benchmark(Outage|Release|Rollback)$' -benchtime 5x -count "$count" ./bench | tee -a "$out"
go test -run '^$' -bench '^BenchmarkProxy' -benchtime 3x -count "$count" ./bench | tee -a "$out"
go test -run '^$' -bench '^BenchmarkExecPipeline' -benchtime 3x -count "$count" ./bench | tee -a "$out"
.ci/kube.sh up >/dev/null
go test -run '^$' -bench 'KubeFailedRollout' -benchtime 3x -count 1 ./bench | tee -a "$out"
go test -run '^$' -bench 'Fault' -benchtime 1x -count 3 ./bench | tee -a "$out"
go run ./bench/report -title "Benchmarks" <"$out" >docs/BENCHMARKS.md
echo "bench: wrote docs/BENCHMARKS.md"
cat docs/BENCHMARKS.md
