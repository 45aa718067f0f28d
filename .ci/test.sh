#!/usr/bin/env bash
# make test: start the rig, then run every test. The end-to-end tests need
# the real gitlab-runner; when it cannot be had they are skipped, and this
# script says so plainly (in CI, where CI=true, that is a failure instead).
set -euo pipefail
cd "$(dirname "$0")/.."

make lint
make cover
.ci/rig.sh up
if GLR_BIN=$(.ci/rig.sh runner | tail -n1) && [ -x "$GLR_BIN/gitlab-runner" ]; then
	export GLR_BIN BERTH_REQUIRE_RIG=1
	echo "test: end-to-end tests run through gitlab-runner from $GLR_BIN"
	skipped=""
else
	skipped="no gitlab-runner could be built from ../shared/gitlab-runner (set BERTH_SHARED or GLR_BIN)"
	if [ "${CI:-}" = true ]; then
		echo "test: error: $skipped" >&2
		exit 1
	fi
	echo "test: WARNING: $skipped: the end-to-end tests will be SKIPPED" >&2
fi

# The Kubernetes control plane (built the first time: several minutes, then
# cached). Without it the kube tests skip, except in CI.
if kubeconfig=$(.ci/kube.sh up | tail -n1); then
	export BERTH_KUBECONFIG=$kubeconfig BERTH_REQUIRE_KUBE=1
	echo "test: Kubernetes tests run against the control plane of .ci/kube.sh ($kubeconfig)"
elif [ "${CI:-}" = true ]; then
	echo "test: error: the test control plane did not start (.ci/kube.sh up)" >&2
	exit 1
else
	kube_skipped="the Kubernetes control plane did not start (.ci/kube.sh up)"
	echo "test: WARNING: $kube_skipped: the Kubernetes tests will be SKIPPED" >&2
fi

# the demo's environments hold ports the tests use
examples/demo.sh down

# one package at a time: several share the engine and the ports 6000-6103.
# CI shows only the end of the log, so a failure is repeated there.
log=$(mktemp)
if ! go test -count=1 -p 1 -timeout 30m ./... 2>&1 | tee "$log" || grep -qE '^(FAIL|--- FAIL|panic:)' "$log"; then
	echo "test: FAILED; the failing tests and their last lines:" >&2
	grep -nE '^(FAIL|--- FAIL|panic:)|^\s+(Error Trace|Error|Messages|Test):' "$log" | tail -n 60 >&2
	rm -f "$log"
	exit 1
fi
rm -f "$log"

# The benchmarks once each, so they cannot rot; timings are for make bench.
if [ -z "$skipped" ]; then
	make build >/dev/null
	log=$(mktemp)
	if ! BERTH_BIN=$PWD/bin/berth go test -count=1 -run '^$' -bench . -benchtime 1x ./bench >"$log" 2>&1; then
		echo "test: FAILED: a benchmark, run once:" >&2
		grep -vE '^Benchmark' "$log" | tail -n 60 >&2
		rm -f "$log"
		exit 1
	fi
	rm -f "$log"
	echo "test: benchmarks ran once each (make bench measures them)"
fi

# The README's first command, with Kubernetes where the control plane runs.
if [ -z "$skipped" ]; then
	demo_kube=1
	[ -z "${kube_skipped:-}" ] || demo_kube=
	make demo DEMO_KUBE=$demo_kube
	examples/demo.sh down
fi

if [ -n "$skipped${kube_skipped:-}" ]; then
	echo "test: WARNING: tests were SKIPPED: $skipped${kube_skipped:-}" >&2
fi
