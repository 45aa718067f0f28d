#!/usr/bin/env bash
# The shell-script way, for side-by-side benchmarks: a custom executor
# driver with the docker CLI, in the style of GitLab's custom executor
# examples. Same semantics as berth where it matters for timing: a job
# network, a long-lived job container with the builds dir bind-mounted,
# the job's script in the container, sources on the host.
#   bashdriver.sh config|prepare|run SCRIPT STAGE|cleanup
# With BASHDRIVER_ON_HOST=1 every stage runs on the host, like the shell
# executor, so job scripts can call the docker CLI (the deploy benchmarks).
set -eo pipefail
id=${CUSTOM_ENV_CI_JOB_ID:?}
name=bash-job-$id
root=${BASHDRIVER_BUILDS:-/tmp/bashdriver}
dir=$root/builds/$id
image=${CUSTOM_ENV_CI_JOB_IMAGE:-busybox:local}

case "$1" in
config)
	printf '{"builds_dir":"%s","cache_dir":"%s/cache","builds_dir_is_shared":false,"driver":{"name":"bash","version":"1"},"shell":"bash"}\n' "$dir" "$root"
	;;
prepare)
	mkdir -p "$dir" "$root/cache"
	[ "${BASHDRIVER_ON_HOST:-}" = 1 ] && exit 0
	docker image inspect "$image" >/dev/null 2>&1 || docker pull "$image"
	docker network create --label "bash.job=$id" "$name" >/dev/null
	docker run -d -i --name "$name" --label "bash.job=$id" --network "$name" \
		-v "$dir:$dir" -v "$root/cache:$root/cache" -w "$dir" --entrypoint sh "$image" >/dev/null
	;;
run)
	case "${BASHDRIVER_ON_HOST:-}:$3" in
	:build_script | :step_* | :after_script)
		docker exec -i "$name" sh <"$2" || { echo $? >"$BUILD_EXIT_CODE_FILE"; exit "$BUILD_FAILURE_EXIT_CODE"; } ;;
	*) bash "$2" || exit "$BUILD_FAILURE_EXIT_CODE" ;;
	esac
	;;
cleanup)
	docker rm -f "$name" >/dev/null 2>&1 || true
	docker network rm "$name" >/dev/null 2>&1 || true
	rm -rf "$dir"
	;;
esac
