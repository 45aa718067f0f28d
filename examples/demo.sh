#!/usr/bin/env bash
# make demo: the whole gitflow of examples/app on this machine, with
# `berth exec` playing GitLab: develop → integration (compose),
# release-1.0.0 → alpha (Kubernetes), v1.0.0 promoted then deployed to prod
# by hand, master → the web container on 127.0.0.1:6000 behind berth's
# Caddy proxy (redeployed under a prober: not one request may fail), and a
# rollback.
#
# It installs and starts what it needs (engine, registry). alpha and prod
# run on the test Kubernetes control plane, which takes about ten minutes to
# build the first time: DEMO_KUBE=1 (make demo DEMO_KUBE=1) builds and starts
# it. Without it, alpha is a container on 127.0.0.1:6020 instead and the prod
# step is skipped, and the demo says so.
#
# The environments stay up afterwards for you to look at;
# `examples/demo.sh down` removes them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# down: the demo's environments, and what berth keeps of them for rollback
if [ "${1:-}" = down ]; then
	for env in web alpha; do docker ps -aq --filter "label=berth.env=$env" | xargs -r docker rm -f >/dev/null; done
	for name in web web-net demo-alpha demo-alpha-net; do docker rm -f "$name" >/dev/null 2>&1 || true; done
	docker ps -aq --filter label=com.docker.compose.project=demo-integration | xargs -r docker rm -f >/dev/null
	docker network rm demo-integration_default >/dev/null 2>&1 || true
	# the proxy in front of web and alpha, its helper, networks and volumes
	docker rm -f berth-proxy-ctl berth-proxy >/dev/null 2>&1 || true
	docker network rm berth-proxy >/dev/null 2>&1 || true
	docker network ls -q --filter label=berth.proxy=berth-proxy | xargs -r docker network rm >/dev/null 2>&1 || true
	docker volume rm berth-proxy-config berth-proxy-data >/dev/null 2>&1 || true
	echo "demo: environments removed"
	exit 0
fi
berth=$root/bin/berth
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
registry=127.0.0.1:5000/demo/app
trap 'status=$?; cleanup; exit $status' EXIT

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\ndemo: FAILED: %s\n' "$*"; exit 1; }

cleanup() { rm -rf "$work"; }

step "rig: engine and registry (the first run installs Debian packages)"
"$root/.ci/rig.sh" up >/dev/null
kube=""
if [ "${DEMO_KUBE:-}" = 1 ]; then
	step "Kubernetes control plane (the first run builds it: about ten minutes)"
	kubeconfig=$("$root/.ci/kube.sh" up | tail -n1)
	kubectl=$("$root/.ci/kube.sh" env | sed -n 's/^KUBECTL=//p')
	for env in alpha prod; do
		"$kubectl" --kubeconfig "$kubeconfig" delete namespace "shop-$env" --ignore-not-found --wait >/dev/null
		"$kubectl" --kubeconfig "$kubeconfig" apply -f "$root/examples/app/k8s/$env.yaml" >/dev/null
		until "$kubectl" --kubeconfig "$kubeconfig" -n "shop-$env" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
	done
	kube=1
fi

step "a git repository of examples/app: master, develop, release-1.0.0, tag v1.0.0"
repo=$work/app
cp -r "$root/examples/app" "$repo"
(cd "$repo" && CGO_ENABLED=0 go build -o app .)
git -C "$repo" init -q -b master
commit() { # VERSION MESSAGE: the app reports VERSION
	sed -i '/^ENV APP_VERSION=/d' "$repo/Dockerfile"
	echo "ENV APP_VERSION=$1" >>"$repo/Dockerfile"
	git -C "$repo" add -A
	git -C "$repo" -c user.name=demo -c user.email=demo@example.com commit -qm "$2"
}
commit 0.9.0 "the example app"
git -C "$repo" checkout -qb develop
commit 1.0.0-dev "work towards 1.0.0"
git -C "$repo" checkout -qb release-1.0.0
commit 1.0.0 "release 1.0.0"
git -C "$repo" tag v1.0.0
git -C "$repo" checkout -q master
git -C "$repo" merge -q --no-ff -m "merge release 1.0.0" release-1.0.0
if [ -n "$kube" ]; then
	alpha=$(printf '[environments.alpha]\ndriver = "kube"\n[environments.alpha.kube]\nkubeconfig = "%s"\nnamespace = "shop-alpha"\ndeployment = "app"\nrollout_timeout = "2m"\n' "$kubeconfig")
else
	kubeconfig=/nonexistent
	alpha=$(printf '[environments.alpha]\ndriver = "container"\n[environments.alpha.container]\nname = "demo-alpha"\nports = ["127.0.0.1:6020:5000"]\nhealth_url = "http://127.0.0.1:6020/health"\n')
fi
cat >"$work/berth.toml" <<TOML
builds_dir = "$work/builds"
cache_dir = "$work/cache"
[job]
default_image = "busybox:local"
helper_image = "berth-helper:local"
[registry]
image = "$registry"
[proxy]
image = "caddy:local" # the rig's, from Debian's caddy; caddy:2 elsewhere

[environments.integration]
driver = "compose"
[environments.integration.compose]
project = "demo-integration"
files = ["compose.yaml"]
services = ["web"]

$alpha

[environments.prod]
driver = "kube"
manual = true
protected = true
[environments.prod.kube]
kubeconfig = "$kubeconfig"
namespace = "shop-prod"
deployment = "app"
rollout_timeout = "2m"

[environments.web]
driver = "container"
[environments.web.container]
name = "web"
ports = ["127.0.0.1:6000:5000"]
restart = "unless-stopped"
health_url = "http://127.0.0.1:6000/health"
TOML

# pipeline TITLE ARGS...: one berth exec run; its log, then its summary
summary=()
pipeline() {
	local title=$1
	shift
	step "$title: berth exec $*"
	local t0=$SECONDS
	if (cd "$repo" && "$berth" --config "$work/berth.toml" exec "$@" 2>&1 | sed 's/^/    /'); then
		summary+=("$(printf '%-44s ok      %4ss' "$title" $((SECONDS - t0)))")
	else
		summary+=("$(printf '%-44s FAILED  %4ss' "$title" $((SECONDS - t0)))")
		show_summary
		fail "$title"
	fi
}
show_summary() {
	step "summary"
	printf '    %s\n' "${summary[@]}"
}

pipeline "develop -> integration (compose)" --ref develop
if [ -n "$kube" ]; then
	pipeline "release-1.0.0 -> alpha (Kubernetes)" --ref release-1.0.0
else
	pipeline "release-1.0.0 -> alpha (container)" --ref release-1.0.0
fi
pipeline "v1.0.0: promote the tested image" --tag v1.0.0
if [ -n "$kube" ]; then
	pipeline "v1.0.0 -> prod (Kubernetes), by hand" --tag v1.0.0 --manual deploy-prod
else
	step "v1.0.0 → prod: skipped (prod is on Kubernetes: make demo DEMO_KUBE=1)"
fi
pipeline "master -> web on 127.0.0.1:6000" --ref master
git -C "$repo" checkout -q master
commit 1.0.1 "a change on master"
# a prober on web while it is replaced: every request must be answered
probe_flag=$work/probing
touch "$probe_flag"
(ok=0 failed=0
	while [ -e "$probe_flag" ]; do
		if curl -fsS -m 2 -o /dev/null http://127.0.0.1:6000/; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
	done
	echo "$ok $failed" >"$work/probe") &
prober=$!
pipeline "master again: web replaced" --ref master
rm -f "$probe_flag"
wait "$prober"
read -r probed probe_failed <"$work/probe"
printf '    prober on 127.0.0.1:6000 during the redeploy: %s requests, %s failed\n' "$((probed + probe_failed))" "$probe_failed"
summary+=("$(printf '%-44s %s' "  requests during it, failed" "$((probed + probe_failed)), $probe_failed")")
pipeline "rollback of web, by hand" --ref master --manual rollback

step "what runs where"
envs="integration alpha web"
[ -z "$kube" ] || envs="integration alpha prod web"
for env in $envs; do
	printf '    %-12s %s\n' "$env" "$("$berth" --config "$work/berth.toml" history "$env" | awk '/ serving / {print "ref " $2 ", tag " $3 ", " $6; exit}')"
done
web=$(curl -fsS http://127.0.0.1:6000/)
integration=$(curl -fsS http://127.0.0.1:6010/)
printf '    curl 127.0.0.1:6000 (web)         → %s\n' "$web"
printf '    curl 127.0.0.1:6010 (integration) → %s\n' "$integration"
show_summary
[ "$web" = "app 1.0.0" ] || fail "web should serve 1.0.0 again after the rollback, not: $web"
[ "$integration" = "app 1.0.0-dev" ] || fail "integration should serve 1.0.0-dev, not: $integration"
[ "$probe_failed" = 0 ] || fail "$probe_failed request(s) to web failed while it was replaced"
left=$(docker ps -aq --filter label=berth.job | wc -l)
[ "$left" = 0 ] || fail "$left job container(s) left behind"
echo
echo "demo: SUCCESS"
