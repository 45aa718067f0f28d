#!/usr/bin/env bash
# make demo: the example app's style and test jobs, run by the real
# gitlab-runner with berth as its custom executor, on this machine.
# Installs and starts what it needs (engine, registry, runner) on first use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${BERTH_SHARED:-$root/../shared}/gitlab-runner
berth=$root/bin/berth
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "rig: engine, registry, images (first run installs Debian packages)"
"$root/.ci/rig.sh" up
step "rig: gitlab-runner (first run builds it, 3-5 min)"
GLR_BIN=$("$root/.ci/rig.sh" runner | tail -n1)
export GLR_BIN

step "a git repository of examples/app"
cp -r "$root/examples/app" "$work/app"
git -C "$work/app" init -q -b master
git -C "$work/app" add .
git -C "$work/app" -c user.name=demo -c user.email=demo@example.com commit -qm "example app"

cat >"$work/berth.toml" <<TOML
builds_dir = "$work/builds"
cache_dir = "$work/cache"
[job]
default_image = "busybox:local"
TOML

# job NAME STAGE [job.py args...]: runs one job, prints its trace's own lines
summary=()
failed=0
job() {
	local name=$1 stage=$2
	shift 2
	step "job $name (stage $stage)"
	"$shared/job.py" --repo "$work/app" --ref master --stage "$stage" --name "$name" "$@" >"$work/$name.json"
	local line
	line=$("$shared/run-job.sh" "$work/$name.json" "$work/out-$name" -- "$berth" --config "$work/berth.toml" | tail -n1)
	python3 - "$work/out-$name/result.json" <<'PY'
import json, re, sys
trace = json.load(open(sys.argv[1]))["trace"]
for l in trace.splitlines():
    l = re.sub(r"^\S+Z \d\d[OE]\+? ?", "", l)
    l = re.sub(r"\x1b\[[0-9;]*[a-zA-Z]|section_(start|end):\d+:\w+\r?", "", l).strip()
    if l and not l.startswith(("export FF_", "Gitaly")):
        print("   ", l)
PY
	local state wall
	state=$(sed -n 's/.*state=\([a-z]*\).*/\1/p' <<<"$line")
	wall=$(sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p' <<<"$line")
	summary+=("$(printf '%-8s %-6s %-8s %6ss' "$name" "$stage" "$state" "$wall")")
	[ "$state" = success ] || failed=1
}

job style style --image busybox:local --script 'test -z "$(grep -L "^package main" *.go)"' --script 'echo "style ok: $(ls *.go | wc -l) Go file(s)"'
job test test --image busybox:local --service web:local=app --script 'wget -qO- http://app:5000/health' --script 'wget -qO- http://app:5000/'

step "summary"
printf '%-8s %-6s %-8s %7s\n' job stage result time
printf '%s\n' "${summary[@]}"
left=$(docker ps -aq --filter label=berth.job | wc -l)
echo "containers left by jobs: $left"
if [ "$failed" = 0 ] && [ "$left" = 0 ]; then echo "demo: SUCCESS"; else echo "demo: FAILED"; exit 1; fi
