#!/usr/bin/env bash
# make cover: the unit coverage (go test -short -cover, no engine, no
# cluster) of the deploy packages, which the fakes of docs/drivers.md must
# keep at 60% or more each; fails when one is below.
set -euo pipefail
cd "$(dirname "$0")/.."
min=${COVER_MIN:-60}
pkgs="./stages ./stages/driver ./stages/target ./stages/containers ./compose ./compose/apply ./kube ./kube/rollout"
out=$(go test -short -count=1 -cover $pkgs)
echo "$out"
low=$(echo "$out" | awk -v min="$min" '/coverage:/ { for (i = 1; i <= NF; i++) if ($i == "coverage:") { v = $(i+1); sub("%", "", v); if (v + 0 < min) print $2 " " v "%" } }')
if [ -n "$low" ]; then
	echo "cover: below ${min}%:" >&2
	echo "$low" >&2
	exit 1
fi
echo "cover: every deploy package at ${min}% or more"
