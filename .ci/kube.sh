#!/usr/bin/env bash
# The test Kubernetes control plane (../shared/notes/kube.md): etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler built from the Go
# module proxy, kwok playing the kubelet of one node, all on 127.0.0.1.
#
#   .ci/kube.sh build   build the binaries (cached outside the clone, by version)
#   .ci/kube.sh up      build, start, wait for a Ready node; prints the kubeconfig path
#   .ci/kube.sh down    stop exactly what up started
#   .ci/kube.sh env     print KUBECONFIG=... and KUBECTL=... for a running plane
#
# BERTH_KUBE_CACHE (default ~/.cache/berth-kube), BERTH_KUBE_DIR (state,
# default /var/tmp/berth-kube) and BERTH_KUBE_PORT (apiserver, default 16443;
# etcd uses the two ports after it) let a developer's cluster and CI coexist.
set -euo pipefail

K8S=v1.32.2
STAGING=v0.32.2 # the k8s.io/* staging modules of $K8S
ETCD=v3.5.16
KWOK=v0.7.0
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${BERTH_KUBE_CACHE:-$HOME/.cache/berth-kube}/k8s-$K8S-etcd-$ETCD-kwok-$KWOK
BIN=$CACHE/bin
STATE=${BERTH_KUBE_DIR:-/var/tmp/berth-kube}
PORT=${BERTH_KUBE_PORT:-16443}
ETCD_CLIENT=$((PORT + 1))
ETCD_PEER=$((PORT + 2))
TOOLS="kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok"

say() { echo "kube: $*" >&2; }
die() { say "$*"; exit 1; }

built() {
	for t in $TOOLS; do [ -x "$BIN/$t" ] || return 1; done
}

# tools_module DIR MODULE VERSION: a module of its own in the cache, so that
# k8s.io/kubernetes never enters the project's go.mod.
tools_module() {
	local dir=$1 mod=$2 ver=$3
	mkdir -p "$dir"
	cp "$here/kube-tools/go.mod" "$dir/go.mod"
	(cd "$dir" && go mod edit -module "berth-kube-tools/$(basename "$dir")" -require "$mod@$ver")
}

build() {
	if built; then
		return 0
	fi
	command -v go >/dev/null || die "go is needed to build the control plane"
	mkdir -p "$BIN"
	local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=32"
	export CGO_ENABLED=0 GOFLAGS=-mod=mod
	say "building kubernetes $K8S (first time: several minutes, cached in $CACHE)"
	tools_module "$CACHE/src/k8s" k8s.io/kubernetes "$K8S"
	# kubernetes requires its staging modules at v0.0.0 and replaces them
	# with local paths; a module that requires it must say which version.
	local kmod
	kmod=$(go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
	local edits=()
	while read -r path; do
		edits+=(-replace "$path=$path@$STAGING")
	done < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$kmod" | sort -u)
	(cd "$CACHE/src/k8s" && go mod edit "${edits[@]}" &&
		go build -trimpath -ldflags "$ldflags" -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver \
			k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
	say "building etcd $ETCD"
	tools_module "$CACHE/src/etcd" go.etcd.io/etcd/server/v3 "$ETCD"
	(cd "$CACHE/src/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
	say "building kwok $KWOK"
	tools_module "$CACHE/src/kwok" sigs.k8s.io/kwok "$KWOK"
	(cd "$CACHE/src/kwok" && go build -trimpath -ldflags "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok)
	built || die "build incomplete in $BIN"
}

running() {
	[ -f "$STATE/pids" ] || return 1
	local pid
	while read -r pid _; do
		kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ] || return 1
	done <"$STATE/pids"
	"$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1
}

certs() {
	local d=$STATE/pki
	[ -f "$d/apiserver.crt" ] && return 0
	mkdir -p "$d"
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=berth-test-ca -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/san.ext"
	openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
		-extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
	openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
	openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
	printf '%s,admin,admin,system:masters\n' "$(openssl rand -hex 16)" >"$d/tokens.csv"
	chmod 600 "$d"/*.key "$d/tokens.csv"
}

kubeconfig() {
	local token
	token=$(cut -d, -f1 "$STATE/pki/tokens.csv")
	cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: berth-test
  context: {cluster: berth-test, user: admin}
current-context: berth-test
EOF
	chmod 600 "$STATE/kubeconfig"
}

start() { # name, command...: in the background, its pid recorded
	local name=$1
	shift
	setsid nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
	echo "$! $name" >>"$STATE/pids"
}

# the API server alone, for the tests that stop it during a rollout
apiserver() {
	local pki=$STATE/pki
	start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_CLIENT" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$PORT" \
		--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
		--token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
		--service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
		--service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
		--endpoint-reconciler-type none --profiling=false
}

apiserver_stop() {
	local pid name rest
	rest=$(mktemp)
	while read -r pid name; do
		if [ "$name" = kube-apiserver ]; then
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			say "stopped kube-apiserver"
		else
			echo "$pid $name" >>"$rest"
		fi
	done <"$STATE/pids"
	mv "$rest" "$STATE/pids"
}

apiserver_start() {
	apiserver
	for _ in $(seq 120); do
		"$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1 && { say "kube-apiserver ready"; return 0; }
		sleep 0.5
	done
	die "kube-apiserver did not get ready"
}

up() {
	build
	if running; then
		echo "$STATE/kubeconfig"
		return 0
	fi
	down >/dev/null 2>&1 || true
	mkdir -p "$STATE"
	certs
	kubeconfig
	: >"$STATE/pids"
	local pki=$STATE/pki
	say "starting etcd, kube-apiserver on 127.0.0.1:$PORT, controller-manager, scheduler, kwok"
	rm -rf "$STATE/etcd"
	start etcd "$BIN/etcd" --data-dir "$STATE/etcd" --unsafe-no-fsync \
		--listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
		--initial-cluster "default=http://127.0.0.1:$ETCD_PEER"
	apiserver
	local i
	for i in $(seq 120); do
		"$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1 && break
		sleep 0.5
	done
	"$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1 ||
		{ tail -20 "$STATE/kube-apiserver.log" >&2; die "kube-apiserver did not get ready"; }
	start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$STATE/kubeconfig" --secure-port 0 \
		--leader-elect=false --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
		--controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller'
	start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/kubeconfig" --secure-port 0 --leader-elect=false
	start kwok "$BIN/kwok" --kubeconfig "$STATE/kubeconfig" \
		--manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake --node-ip 127.0.0.1 \
		--cidr 10.244.0.1/16 --node-lease-duration-seconds 40
	"$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kwok-node-0, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
	"$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" wait --for condition=Ready node/kwok-node-0 --timeout 60s >/dev/null ||
		{ tail -20 "$STATE/kwok.log" >&2; die "the kwok node did not get Ready"; }
	say "ready: KUBECONFIG=$STATE/kubeconfig"
	echo "$STATE/kubeconfig"
}

down() {
	[ -f "$STATE/pids" ] || return 0
	local pid name
	while read -r pid name; do
		kill "$pid" 2>/dev/null && say "stopped $name" || true
	done < <(tac "$STATE/pids")
	rm -f "$STATE/pids"
}

case "${1:-up}" in
build) build ;;
up) up ;;
down) down ;;
env) echo "KUBECONFIG=$STATE/kubeconfig" && echo "KUBECTL=$BIN/kubectl" ;;
apiserver-stop) apiserver_stop ;;
apiserver-start) apiserver_start ;;
*) die "usage: $0 build|up|down|env|apiserver-stop|apiserver-start" ;;
esac
