#!/usr/bin/env bash
# The test rig: a real Docker engine, a real registry and locally built images.
#
#   .ci/rig.sh up        install what is missing, start engine + registry, build images
#   .ci/rig.sh engine    only the engine
#   .ci/rig.sh registry  only the registry on 127.0.0.1:5000
#   .ci/rig.sh images    only the test images (busybox:local, bash:local, berth-helper:local, caddy:local, web:local)
#   .ci/rig.sh runner    build the real gitlab-runner; prints its bin dir last
#   .ci/rig.sh sshd      an sshd on 127.0.0.1:2222 for ssh:// docker hosts (key in $BERTH_RIG_DIR/ssh)
#   .ci/rig.sh down      stop the engine and registry this script started
#   .ci/rig.sh engine-restart | registry-stop   for the fault tests
#
# Everything runs in the background without systemd. State lives in
# $BERTH_RIG_DIR (default /var/tmp/berth-rig), outside the clone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
RIG=${BERTH_RIG_DIR:-/var/tmp/berth-rig}
SOCK=/var/run/docker.sock
mkdir -p "$RIG"

say() { printf 'rig: %s\n' "$*" >&2; }
die() { printf 'rig: error: %s\n' "$*" >&2; exit 1; }

apt_install() { # apt_install PKG... : installs the missing ones
	local missing=() p
	for p in "$@"; do
		# a removed package keeps its config files and still answers dpkg -s
		[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
	say "installing ${missing[*]}"
	if [ ! -f "$RIG/.apt-updated" ] || [ -n "$(find "$RIG/.apt-updated" -mmin +720)" ]; then
		apt-get update -qq >&2 && touch "$RIG/.apt-updated"
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ping_engine() { curl -sf --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }

alive() { # alive PID: running and not a zombie
	local st
	st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	case "$st" in Z*) return 1 ;; esac
}

engine() {
	if ping_engine; then say "engine answers on $SOCK"; return 0; fi
	apt_install docker.io curl
	# a dead daemon's pidfiles stop a restart ("pid file found")
	local f
	for f in /var/run/docker.pid /run/docker/containerd/containerd.pid; do
		if [ -f "$f" ] && ! alive "$(cat "$f")"; then rm -f "$f"; fi
	done
	say "starting dockerd (log: $RIG/dockerd.log)"
	setsid nohup dockerd --host "unix://$SOCK" >"$RIG/dockerd.log" 2>&1 </dev/null &
	echo $! >"$RIG/dockerd.pid"
	for _ in $(seq 150); do ping_engine && { say "engine ready"; return 0; }; sleep 0.2; done
	tail -20 "$RIG/dockerd.log" >&2
	die "dockerd did not answer on $SOCK within 30 s"
}

registry() {
	if curl -sf --max-time 2 http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then say "registry answers on 127.0.0.1:5000"; return 0; fi
	apt_install docker-registry curl
	mkdir -p "$RIG/registry-data"
	cat >"$RIG/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $RIG/registry-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
YML
	say "starting docker-registry on 127.0.0.1:5000"
	setsid nohup docker-registry serve "$RIG/registry.yml" >"$RIG/registry.log" 2>&1 </dev/null &
	echo $! >"$RIG/registry.pid"
	for _ in $(seq 100); do curl -sf --max-time 1 http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && { say "registry ready"; return 0; }; sleep 0.1; done
	tail -20 "$RIG/registry.log" >&2
	die "registry did not answer on 127.0.0.1:5000"
}

# docker CLI: Debian's client speaks API 1.41 and builds with the classic builder here
docker_cli() { DOCKER_BUILDKIT=0 /usr/bin/docker "$@"; }

images() {
	apt_install busybox-static
	local ctx
	# busybox:local, a shell image without bash
	if ! docker_cli image inspect busybox:local >/dev/null 2>&1; then
		ctx=$(mktemp -d)
		cp /bin/busybox "$ctx/busybox"
		printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nRUN ["/bin/mkdir","-p","/tmp","/root"]\nENV PATH=/bin\nCMD ["sh"]\n' >"$ctx/Dockerfile"
		docker_cli build -q -t busybox:local "$ctx" >&2
		rm -rf "$ctx"
	fi
	# bash:local, busybox plus the host's bash and the libraries it links
	if ! docker_cli image inspect bash:local >/dev/null 2>&1; then
		ctx=$(mktemp -d)
		mkdir -p "$ctx/root/bin"
		cp /bin/bash "$ctx/root/bin/bash"
		ldd /bin/bash | grep -o '/[^ ]*' | while read -r lib; do
			mkdir -p "$ctx/root$(dirname "$lib")"; cp -L "$lib" "$ctx/root$lib"
		done
		printf 'FROM busybox:local\nCOPY root/ /\n' >"$ctx/Dockerfile"
		docker_cli build -q -t bash:local "$ctx" >&2
		rm -rf "$ctx"
	fi
	helper_image
	caddy_image
	# web:local, the example app FROM scratch
	local stamp
	stamp=$(cat "$root"/examples/app/*.go "$root"/examples/app/Dockerfile | sha256sum | cut -c1-12)
	if [ "$(docker_cli image inspect -f '{{index .Config.Labels "berth.rig.stamp"}}' web:local 2>/dev/null)" != "$stamp" ]; then
		ctx=$(mktemp -d)
		cp -r "$root/examples/app/." "$ctx/"
		(cd "$ctx" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o app .) >&2
		docker_cli build -q --label "berth.rig.stamp=$stamp" -t web:local "$ctx" >&2
		rm -rf "$ctx"
	fi
	say "images ready: busybox:local bash:local berth-helper:local caddy:local web:local"
}

# berth-helper:local, the job helper image (berth.toml job.helper_image):
# bash:local plus this host's git and git-lfs with the libraries they link,
# what GitLab's helper image has; gitlab-runner is mounted by berth.
helper_image() {
	apt_install git git-lfs ca-certificates
	local stamp ctx f
	stamp=$( (git --version; git-lfs --version; echo 2) | sha256sum | cut -c1-12)
	if [ "$(docker_cli image inspect -f '{{index .Config.Labels "berth.rig.stamp"}}' berth-helper:local 2>/dev/null)" = "$stamp" ]; then
		return 0
	fi
	ctx=$(mktemp -d)
	mkdir -p "$ctx/root/usr/bin" "$ctx/root/usr/lib" "$ctx/root/usr/share" "$ctx/root/etc/ssl/certs"
	cp -a /usr/bin/git /usr/bin/git-lfs "$ctx/root/usr/bin/"
	cp -a /usr/lib/git-core "$ctx/root/usr/lib/"
	cp -a /usr/share/git-core "$ctx/root/usr/share/"
	cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/root/etc/ssl/certs/"
	printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$ctx/root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/root/etc/group"
	for f in /usr/bin/git /usr/bin/git-lfs /usr/lib/git-core/*; do
		[ -L "$f" ] && continue
		{ ldd "$f" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
			[ -e "$ctx/root$lib" ] || { mkdir -p "$ctx/root$(dirname "$lib")"; cp -L "$lib" "$ctx/root$lib"; }
		done
	done
	# git lfs install: the system-wide filters, as GitLab's helper image has
	printf 'FROM bash:local\nCOPY root/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/root\nRUN ["/bin/mkdir","-p","/root"]\nRUN ["/usr/bin/git","lfs","install","--system","--skip-repo"]\n' >"$ctx/Dockerfile"
	docker_cli build -q --label "berth.rig.stamp=$stamp" -t berth-helper:local "$ctx" >&2
	rm -rf "$ctx"
}

# caddy:local, the proxy of container environments (berth.toml
# [proxy] image; caddy:2 elsewhere): Debian's caddy with the libraries it
# links, laid out as the official image is (XDG dirs /config and /data).
caddy_image() {
	apt_install caddy ca-certificates
	local stamp ctx lib
	stamp=$( (caddy version; echo 1) | sha256sum | cut -c1-12)
	if [ "$(docker_cli image inspect -f '{{index .Config.Labels "berth.rig.stamp"}}' caddy:local 2>/dev/null)" = "$stamp" ]; then
		return 0
	fi
	ctx=$(mktemp -d)
	mkdir -p "$ctx/root/usr/bin" "$ctx/root/etc/ssl/certs" "$ctx/root/config" "$ctx/root/data" "$ctx/root/etc/caddy" "$ctx/root/srv" "$ctx/root/tmp"
	cp /usr/bin/caddy "$ctx/root/usr/bin/caddy"
	cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/root/etc/ssl/certs/"
	printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$ctx/root/etc/passwd"
	ldd /usr/bin/caddy | grep -o '/[^ ]*' | while read -r lib; do
		mkdir -p "$ctx/root$(dirname "$lib")"; cp -L "$lib" "$ctx/root$lib"
	done
	printf 'FROM scratch\nCOPY root/ /\nENV PATH=/usr/bin XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data\nWORKDIR /srv\nEXPOSE 80 443 2019\nCMD ["caddy", "run", "--resume"]\n' >"$ctx/Dockerfile"
	docker_cli build -q --label "berth.rig.stamp=$stamp" -t caddy:local "$ctx" >&2
	rm -rf "$ctx"
}

runner() {
	local shared=${BERTH_SHARED:-$root/../shared}
	[ -x "$shared/gitlab-runner/build.sh" ] || die "no gitlab-runner harness at $shared/gitlab-runner (set BERTH_SHARED)"
	apt_install git python3
	"$shared/gitlab-runner/build.sh" | tail -n1
}

# sshd on loopback, root by key only, for deploys to ssh:// docker hosts
sshd() {
	local d=$RIG/ssh
	if [ -f "$d/sshd.pid" ] && alive "$(cat "$d/sshd.pid")"; then say "sshd answers on 127.0.0.1:2222"; return 0; fi
	apt_install openssh-server openssh-client
	mkdir -p "$d" /run/sshd
	chmod 700 "$d"
	[ -f "$d/host_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$d/host_key"
	[ -f "$d/id" ] || ssh-keygen -q -t ed25519 -N "" -f "$d/id"
	cp "$d/id.pub" "$d/authorized_keys"
	cat >"$d/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port 2222
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
CFG
	/usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
	for _ in $(seq 50); do
		ssh -q -i "$d/id" -p 2222 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes root@127.0.0.1 true 2>/dev/null && { say "sshd ready on 127.0.0.1:2222"; return 0; }
		sleep 0.1
	done
	tail -5 "$d/sshd.log" >&2
	die "sshd did not accept the rig's key on 127.0.0.1:2222"
}

# for the fault tests: the engine and the registry go away and come back
engine_restart() {
	local pid
	pid=$(cat "$RIG/dockerd.pid" 2>/dev/null || pidof dockerd || true)
	[ -n "$pid" ] || die "no dockerd to restart"
	kill "$pid"
	for _ in $(seq 150); do alive "$pid" || break; sleep 0.2; done
	alive "$pid" && die "dockerd $pid did not stop"
	rm -f /var/run/docker.pid "$RIG/dockerd.pid"
	say "stopped dockerd $pid"
	engine
}

registry_stop() {
	[ -f "$RIG/registry.pid" ] || die "the registry was not started by this script"
	kill "$(cat "$RIG/registry.pid")" 2>/dev/null || true
	rm -f "$RIG/registry.pid"
	for _ in $(seq 50); do curl -sf --max-time 1 http://127.0.0.1:5000/v2/ >/dev/null 2>&1 || break; sleep 0.1; done
	say "stopped the registry"
}

down() {
	local f
	if [ -f "$RIG/ssh/sshd.pid" ]; then kill "$(cat "$RIG/ssh/sshd.pid")" 2>/dev/null || true; rm -f "$RIG/ssh/sshd.pid"; fi
	for f in registry dockerd; do
		if [ -f "$RIG/$f.pid" ]; then
			kill "$(cat "$RIG/$f.pid")" 2>/dev/null || true
			rm -f "$RIG/$f.pid"
			say "stopped $f"
		fi
	done
}

case "${1:-up}" in
up) engine; registry; images; sshd ;;
engine | registry | images | runner | sshd | down) "$1" ;;
engine-restart) engine_restart ;;
registry-stop) registry_stop ;;
*) die "unknown command $1 (up|engine|registry|images|runner|sshd|down|engine-restart|registry-stop)" ;;
esac
