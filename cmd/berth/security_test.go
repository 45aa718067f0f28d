package main

// The trust boundary (docs/security.md), tried through the real runner as
// someone who can push would: each test runs the attack and asserts the
// safe outcome, and that the legitimate path still works.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor"
)

// marker is a path on the runner host that a job must never be able to
// create.
func marker(t *testing.T, what string) string {
	p := filepath.Join(os.TempDir(), fmt.Sprintf("berth-%s-%d", what, time.Now().UnixNano()))
	t.Cleanup(func() { os.Remove(p) })
	return p
}

// A job's hooks run in its helper container, not on the runner host.
func TestE2EHookRunsInTheHelperNotOnTheHost(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	toml := writeTOML(t, defaultTOML)
	proof := marker(t, "hook")
	hook := fmt.Sprintf(`touch %s; echo "hook pid1=$(cat /proc/1/comm)"; test -S /var/run/docker.sock && echo HOOK-SEES-DOCKER || echo hook-sees-no-docker`, proof)
	res := r.runJob(t, toml, "--repo", repo, "--ref", "master", "--stage", "test", "--image", "busybox:local",
		"--hook", "pre_get_sources_script="+hook, "--script", "cat README")
	tr := traceLines(res.Trace)
	require.Equal(t, "success", res.State, tr)
	assert.Contains(t, tr, "hook pid1=docker-init", "the hook ran, in the helper container")
	assert.Contains(t, tr, "hook-sees-no-docker")
	assert.NoFileExists(t, proof, "the hook never ran on the runner host")
	assert.Contains(t, tr, "\napp\n", "the sources are still checked out")
	r.requireNothingLeft(t, res.JobID)
}

// What a job puts on PATH through $GITLAB_ENV reaches only its containers.
func TestE2EGitlabEnvPathHijackStaysInTheContainer(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	toml := writeTOML(t, defaultTOML)
	proof := marker(t, "path")
	evil := fmt.Sprintf(`#!/bin/sh\necho "EVIL RAN as $0 in $(cat /proc/1/comm)"; touch %s; exit 0\n`, proof)
	script := fmt.Sprintf(`mkdir -p evil c && printf '%s' > evil/gitlab-runner && cp evil/gitlab-runner evil/git && chmod +x evil/* && echo "PATH=$PWD/evil:$PATH" >> "$GITLAB_ENV" && echo cached > c/f`, evil)
	res := r.runJob(t, toml, "--repo", repo, "--ref", "master", "--stage", "test", "--image", "busybox:local",
		"--script", script, "--cache", "hijack=c")
	tr := traceLines(res.Trace)
	assert.Contains(t, tr, "EVIL RAN as", "the later stages took the job's PATH")
	assert.Contains(t, tr, "in docker-init", "in the helper container")
	assert.NoFileExists(t, proof, "nothing of the job ran on the runner host")
	r.requireNothingLeft(t, res.JobID)
}

// A job's container sees its own project's cache dir only, and protected
// refs keep theirs apart.
func TestE2ECachesAreTheProjectsOwn(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	toml := writeTOML(t, defaultTOML)
	job := func(project string, id int, ref, script string) string {
		t.Helper()
		res := r.runJob(t, toml, "--repo", repo, "--ref", ref, "--stage", "test", "--image", "busybox:local",
			"--project-path", project, "--project-id", fmt.Sprint(id), "--cache", "shared=c", "--script", script)
		require.Equal(t, "success", res.State, traceLines(res.Trace))
		r.requireNothingLeft(t, res.JobID)
		return traceLines(res.Trace)
	}
	write := `mkdir -p c && echo "$CI_PROJECT_PATH on $CI_COMMIT_REF_NAME" > c/f`
	read := `cat c/f 2>/dev/null || echo "cache: none"; find / -name cache.zip 2>/dev/null | while read z; do echo "Z=$z"; done`
	job("grp/alpha", 501, "master", write)
	job("grp/alpha", 501, "feature/x", write)

	tr := job("grp/alpha", 501, "master", read)
	assert.Contains(t, tr, "grp/alpha on master", "the project's own protected cache")
	tr = job("grp/alpha", 501, "feature/x", read)
	assert.Contains(t, tr, "grp/alpha on feature/x", "an unprotected ref gets the unprotected cache")
	assert.NotContains(t, tr, "on master")

	tr = job("grp/beta", 502, "master", read)
	assert.Contains(t, tr, "cache: none", "another project's cache key is not this project's")
	assert.NotContains(t, tr, "grp/alpha")
	assert.NotContains(t, tr, "Z=/", "no other cache archive is visible")
}

// Variables a job sets itself open no gate: protection is git_info's.
func TestE2EGateVariablesOnAnUnprotectedRef(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	repo.git("branch", "feature-x")
	name := fmt.Sprintf("berth-e2e-gated-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[[flows]]
name = "any"
branch = ".*"
image_tag = "{ref}"
environment = "gated"
[environments.gated]
driver = "container"
manual = true
protected = true
[environments.gated.container]
name = %q
ports = ["127.0.0.1:6104:5000"]
health_url = "http://127.0.0.1:6104/health"
`, name))
	res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "feature-x", "--stage", "deploy", "--protected", "false",
		"--var", "CI_COMMIT_REF_PROTECTED=true", "--var", "CI_JOB_MANUAL=true", "--project-path", "grp/gated-"+name)
	tr := traceLines(res.Trace)
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, tr, "environment gated deploys only from protected refs, and feature-x is not protected in GitLab")
	assert.NotContains(t, tr, "berth: build ", "refused before anything was built")
	assert.Contains(t, httpGet("http://127.0.0.1:6104/"), "error", "nothing deployed")
	r.requireNothingLeft(t, res.JobID)

	res = r.runJob(t, toml, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--protected", "true", "--manual", "--project-path", "grp/gated-"+name)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6104/"))
	r.requireNothingLeft(t, res.JobID)
}

// An environment belongs to berth.toml's projects, else to the first
// project that deployed it; others' deploy and rollback jobs are refused.
func TestE2EAnotherProjectsDeployIsRefused(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	name := fmt.Sprintf("berth-e2e-owned-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	env := fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[environments.web]
driver = "container"
%%s
[environments.web.container]
name = %q
ports = ["127.0.0.1:6105:5000"]
health_url = "http://127.0.0.1:6105/health"
`, name)
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(env, ""))
	owner, other := "grp/owner-"+name, "grp/other-"+name
	deploy := func(toml, project string, id int, args ...string) jobResult {
		t.Helper()
		res := r.runJob(t, toml, append([]string{"--repo", repo.dir, "--ref", "master", "--stage", "deploy",
			"--project-path", project, "--project-id", fmt.Sprint(id)}, args...)...)
		r.requireNothingLeft(t, res.JobID)
		return res
	}
	res := deploy(toml, owner, 601)
	require.Equal(t, "success", res.State, traceLines(res.Trace))

	repo.commit("v2")
	for _, extra := range [][]string{nil, {"--var", "BERTH_ACTION=rollback"}} {
		res = deploy(toml, other, 602, extra...)
		tr := traceLines(res.Trace)
		assert.Equal(t, "failed", res.State)
		assert.Contains(t, tr, "environment web belongs to "+owner+", the first project that deployed it")
		assert.Contains(t, tr, "environments.web.projects")
		assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6105/"), "the owner's version still serves")
	}
	out, err := exec.Command(r.berth, "--config", toml, "history", "web").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "web belongs to "+owner)

	res = deploy(toml, owner, 601)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app v2", httpGet("http://127.0.0.1:6105/"), "the owner deploys")

	// berth.toml decides where it names projects
	shared := writeTOML(t, defaultTOML+fmt.Sprintf(env, `projects = ["grp/*"]`))
	repo.commit("v3")
	res = deploy(shared, other, 602)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app v3", httpGet("http://127.0.0.1:6105/"))
	res = deploy(shared, "elsewhere/app-"+name, 603)
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, traceLines(res.Trace), "belongs to grp/* (environments.web.projects in berth.toml)")
}

// CI_REGISTRY_IMAGE and CI_REGISTRY set by a job choose neither where
// berth pushes nor where its logins go, and nothing is tagged under a name
// the job chose.
func TestE2ERegistryImageFromAJobVariable(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	name := fmt.Sprintf("berth-e2e-reg-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	var hits atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer evil.Close()
	evilHost := strings.TrimPrefix(evil.URL, "http://")
	// the runner user's docker config has a login for the job's host
	dockerConfig := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dockerConfig, "config.json"),
		[]byte(fmt.Sprintf(`{"auths":{%q:{"auth":"cnVubmVyOnJ1bm5lci1zZWNyZXQ="}}}`, evilHost)), 0o600))
	toml := webTOML(t, name, 6106)
	project := "grp/" + name
	res := r.runJobEnv(t, toml, []string{"DOCKER_CONFIG=" + dockerConfig}, nil, "--repo", repo.dir, "--ref", "master", "--stage", "deploy",
		"--project-path", project, "--var", "CI_REGISTRY_IMAGE=alpine", "--var", "CI_REGISTRY="+evilHost,
		"--var", "CI_REGISTRY_IMAGE="+evilHost+"/other/app")
	tr := traceLines(res.Trace)
	require.Equal(t, "success", res.State, tr)
	assert.Contains(t, tr, "web runs 127.0.0.1:5000/berth-e2e/"+project+"@sha256:")
	assert.Zero(t, hits.Load(), "nothing went to the registry the job named")
	_, err := r.docker.ImageInspect(context.Background(), "alpine:latest")
	assert.Error(t, err, "nothing tagged alpine:latest on the engine")
	assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6106/"))
	r.requireNothingLeft(t, res.JobID)
}

// A compose file from the checkout gets no privileges, host mounts or
// socket, and cannot take berth's names or labels.
func TestE2EPrivilegedComposeFileIsRefused(t *testing.T) {
	r := needRig(t)
	r.withHelper(t, "berth-compose")
	project := fmt.Sprintf("berthpriv%d", time.Now().UnixNano()%1e8)
	image := "127.0.0.1:5000/berth-e2e/" + project
	repo := newAppRepo(t)
	hostile := fmt.Sprintf(`services:
  web:
    image: %[1]s:develop
    ports: ["127.0.0.1:6107:5000"]
  pwn:
    image: busybox:local
    privileged: true
    container_name: berth-lock-web
    labels: {berth.env: web}
    volumes: ["/var/run/docker.sock:/var/run/docker.sock", "/etc:/host-etc"]
    env_file: /etc/gitlab-runner/berth.toml
`, image)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(hostile), 0o644))
	repo.commit("dev1")
	repo.git("checkout", "-qb", "develop")
	removeComposeProject(t, project)
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = %q
[environments.integration]
driver = "compose"
[environments.integration.compose]
project = %q
services = ["web"]
wait_timeout = "30s"
`, image, project))
	res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "develop", "--stage", "deploy")
	tr := traceLines(res.Trace)
	assert.Equal(t, "failed", res.State)
	assert.Equal(t, "script_failure", res.FailureReason, "the job's fault")
	assert.Contains(t, tr, `compose.yaml: service pwn env_file: "/etc/gitlab-runner/berth.toml" is outside the project's checkout (allow it with environments.integration.compose.allow = ["host_files"] in berth.toml)`)
	out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+project).Output()
	assert.Empty(t, strings.TrimSpace(string(out)), "nothing of the project was created")

	// without env_file, the rest is refused after loading
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(strings.Replace(hostile, "    env_file: /etc/gitlab-runner/berth.toml\n", "", 1)), 0o644))
	repo.commit("dev2")
	res = r.runJob(t, toml, "--repo", repo.dir, "--ref", "develop", "--stage", "deploy")
	tr = traceLines(res.Trace)
	assert.Equal(t, "failed", res.State)
	for _, want := range []string{
		`service pwn: privileged: true (allow it with environments.integration.compose.allow = ["privileged"]`,
		`service pwn: the Docker socket (/var/run/docker.sock) as a volume (allow it with environments.integration.compose.allow = ["docker_socket"]`,
		`service pwn: the host path /etc as a volume (allow it with environments.integration.compose.allow = ["bind_mounts"]`,
		`service pwn: container_name: berth-lock-web, a name berth uses (allow it with environments.integration.compose.allow = ["names"]`,
		`service pwn: label berth.env, which berth writes itself (allow it with environments.integration.compose.allow = ["berth_labels"]`,
	} {
		assert.Contains(t, tr, want)
	}
	out, _ = exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+project).Output()
	assert.Empty(t, strings.TrimSpace(string(out)), "nothing of the project was created")

	// the legitimate file deploys
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(fmt.Sprintf(
		"services:\n  web:\n    image: %s:develop\n    ports: [\"127.0.0.1:6107:5000\"]\n", image)), 0o644))
	repo.commit("dev3")
	res = r.runJob(t, toml, "--repo", repo.dir, "--ref", "develop", "--stage", "deploy")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app dev3", httpGet("http://127.0.0.1:6107/"))
	r.requireNothingLeft(t, res.JobID)
}

// A tag pushed to the registry again after its release job is not
// deployed: the digest's revision label must be the tag's commit.
func TestE2ERePushedTagIsNotDeployed(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	name := fmt.Sprintf("berth-e2e-prod-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	project := "grp/" + name
	repoImage := "127.0.0.1:5000/berth-e2e/" + project
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[environments.prod]
driver = "container"
manual = true
protected = true
[environments.prod.container]
name = %q
ports = ["127.0.0.1:6108:5000"]
health_url = "http://127.0.0.1:6108/health"
`, name))
	job := func(args ...string) jobResult {
		t.Helper()
		res := r.runJob(t, toml, append([]string{"--repo", repo.dir, "--project-path", project}, args...)...)
		r.requireNothingLeft(t, res.JobID)
		return res
	}
	res := job("--ref", "master", "--stage", "release")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	repo.git("tag", "v1.0.0")
	res = job("--tag", "v1.0.0", "--stage", "release")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Contains(t, traceLines(res.Trace), "promoted "+repoImage+":latest to "+repoImage+":v1.0.0")

	// someone pushes another image as v1.0.0
	ctx := context.Background()
	require.NoError(t, r.docker.ImageTag(ctx, "web:local", repoImage+":v1.0.0"))
	auth, _ := registry.EncodeAuthConfig(registry.AuthConfig{})
	rc, err := r.docker.ImagePush(ctx, repoImage+":v1.0.0", image.PushOptions{RegistryAuth: auth})
	require.NoError(t, err)
	var last struct{ Error string }
	dec := json.NewDecoder(rc)
	for dec.Decode(&last) == nil {
		require.Empty(t, last.Error)
	}
	rc.Close()

	res = job("--tag", "v1.0.0", "--stage", "deploy", "--manual")
	tr := traceLines(res.Trace)
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, tr, "was built from (no revision label), not from "+repo.git("rev-parse", "--short=8", "HEAD"))
	assert.Contains(t, tr, "the tag was pushed to the registry again after its release job")
	assert.Contains(t, httpGet("http://127.0.0.1:6108/"), "error", "nothing deployed")

	// the release job again puts the tested image back; then it deploys
	res = job("--tag", "v1.0.0", "--stage", "release")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	res = job("--tag", "v1.0.0", "--stage", "deploy", "--manual")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6108/"))
}

// What the helper container took over from the runner host still works
// through the real runner: clone with submodules and LFS, caches,
// artifacts uploaded to the runner's server, $GITLAB_ENV, file variables.
func TestE2EHelperStagesKeepWorking(t *testing.T) {
	r := needRig(t)
	dir := filepath.Join(t.TempDir(), "app")
	git := func(d string, args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "protocol.file.allow=always"}, args...)...)
		cmd.Dir = d
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}
	sub := filepath.Join(dir, ".subrepo")
	require.NoError(t, os.MkdirAll(sub, 0o755))
	git(sub, "init", "-q", "-b", "main")
	require.NoError(t, os.WriteFile(filepath.Join(sub, "subfile"), []byte("from the submodule\n"), 0o644))
	git(sub, "add", ".")
	git(sub, "commit", "-qm", "sub")
	git(dir, "init", "-q", "-b", "master")
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".git", "info", "exclude"), []byte(".subrepo\n"), 0o644))
	git(dir, "lfs", "install", "--local")
	git(dir, "lfs", "track", "*.bin")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "big.bin"), []byte("large file content\n"), 0o644))
	git(dir, "submodule", "add", "-q", "./.subrepo", "mod")
	git(dir, "add", ".")
	git(dir, "commit", "-qm", "app")

	toml := writeTOML(t, defaultTOML+"helper_network = \"host\"\n")
	edit := func(p map[string]any) {
		p["variables"] = append(p["variables"].([]any), map[string]any{"key": "CONF_FILE", "value": "file variable content", "file": true})
	}
	res := r.runJobWith(t, toml, edit, "--repo", dir, "--ref", "master", "--stage", "test", "--image", "busybox:local",
		// the submodule's file:// URL needs git's consent since 2.38
		"--var", "GIT_SUBMODULE_STRATEGY=recursive", "--var", "GIT_CONFIG_COUNT=1",
		"--var", "GIT_CONFIG_KEY_0=protocol.file.allow", "--var", "GIT_CONFIG_VALUE_0=always",
		"--cache", "k=c", "--artifact", "out",
		"--script", `cat mod/subfile; cat big.bin; cat "$CONF_FILE"; echo "FROM_SCRIPT=carried over" >> "$GITLAB_ENV"; mkdir -p out c; echo artifact > out/a.txt; echo cached > c/f`,
		"--after-script", `echo "after_script sees: $FROM_SCRIPT"`)
	tr := traceLines(res.Trace)
	require.Equal(t, "success", res.State, tr)
	assert.Contains(t, tr, "\nfrom the submodule\n", "submodules")
	assert.Contains(t, tr, "\nlarge file content\n", "LFS")
	assert.Contains(t, tr, "\nfile variable content\n", "file variables")
	assert.Contains(t, tr, "after_script sees: carried over", "$GITLAB_ENV")
	assert.Contains(t, tr, "Created cache")
	assert.Contains(t, tr, "Uploading artifacts as \"archive\" to coordinator... 201 Created")
	entries, err := os.ReadDir(filepath.Join(res.out, "artifacts"))
	require.NoError(t, err)
	assert.NotEmpty(t, entries, "the runner's server has the artifacts")
	r.requireNothingLeft(t, res.JobID)
}

// A native job's helper joins a spare network namespace that serves it
// alone: what its root changes there (its /etc/hosts, to send the next
// job's git to another host) never reaches the next job, whose helper
// joins a fresh one.
func TestE2ENativeJobsNeverShareANamespace(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	out, err := exec.Command("git", "-C", repo, "branch", "feature-ns").CombinedOutput()
	require.NoError(t, err, string(out))
	toml := writeTOML(t, defaultTOML)
	ctx := context.Background()
	// the spares a job may take: running, and without a claim (a used
	// spare stays until berth spares, run after cleanup, removes it)
	spares := func() []string {
		list, err := r.docker.ContainerList(ctx, container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("name", executor.HelpersNetwork+"-spare-"))})
		require.NoError(t, err)
		claimed := map[string]bool{}
		for _, c := range list {
			if c.Labels[executor.LabelRole] == executor.RoleClaim {
				claimed[strings.TrimSuffix(c.Names[0], "-claim")] = true
			}
		}
		var ids []string
		for _, c := range list {
			if c.Labels[executor.LabelRole] == executor.RoleSpare && c.State == "running" && !claimed[c.Names[0]] {
				ids = append(ids, c.ID[:12])
			}
		}
		return ids
	}
	job := func(hook string) (string, string) {
		res := r.runJob(t, toml, "--repo", repo, "--ref", "feature-ns", "--stage", "deploy", "--image", "busybox:local",
			"--hook", "pre_get_sources_script="+hook+`; echo "ns=$(hostname)"`)
		tr := traceLines(res.Trace)
		require.Equal(t, "success", res.State, tr)
		require.Contains(t, tr, "no job container needed")
		r.requireNothingLeft(t, res.JobID)
		m := regexp.MustCompile(`\nns=(\w+)`).FindStringSubmatch(tr)
		require.NotNil(t, m, tr)
		return m[1], tr
	}
	first, _ := job("echo 203.0.113.9 gitlab.example >> /etc/hosts")
	var ready []string
	require.Eventually(t, func() bool { ready = spares(); return len(ready) >= 2 }, 20*time.Second, 100*time.Millisecond,
		"berth spares, started by the first job's cleanup, fills the pool")
	assert.NotContains(t, ready, first, "a used namespace is never offered again")
	second, tr := job("grep gitlab.example /etc/hosts || echo clean-hosts")
	assert.Contains(t, tr, "\nclean-hosts", "the first job's DNS reached the second")
	assert.NotEqual(t, first, second)
	assert.Contains(t, ready, second, "the second job's helper joined a spare")
}

// A release is code of whoever can push to its project. Behind a shared
// proxy, project a's release (its app and its release command) tries
// project b's app at its address: it must not get through, while the
// proxy still serves both.
func TestE2EAReleaseCannotReachAnotherProjectsApp(t *testing.T) {
	r := needRig(t)
	n := time.Now().UnixNano() % 1e8
	nameA, nameB := fmt.Sprintf("berth-e2e-apa-%d", n), fmt.Sprintf("berth-e2e-apb-%d", n)
	t.Cleanup(func() { removeByName(r, nameA); removeByName(r, nameB) })
	env := `
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[environments.web]
driver = "container"
[environments.web.container]
name = %q
ports = ["127.0.0.1:%d:5000"]
health_timeout = "20s"
stop_timeout = "2s"
%s
`
	deploy := func(toml, dir, project string, id int) jobResult {
		t.Helper()
		res := r.runJob(t, toml, "--repo", dir, "--ref", "master", "--stage", "deploy",
			"--project-path", project, "--project-id", fmt.Sprint(id))
		r.requireNothingLeft(t, res.JobID)
		return res
	}
	b := newAppRepo(t)
	b.commit("b")
	res := deploy(writeTOML(t, defaultTOML+fmt.Sprintf(env, nameB, 6106, "")), b.dir, "grp/b-"+nameB, 611)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	ip, err := exec.Command("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", nameB).CombinedOutput()
	require.NoError(t, err, string(ip))
	addrB := strings.TrimSpace(string(ip))
	require.NotEmpty(t, addrB)

	// a's image: its release command and its app try b
	a := newAppRepo(t)
	probe := fmt.Sprintf("#!/bin/sh\nif printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 %s 5000 | grep -q '^HTTP/1.. 200'; then echo reached; exit 1; fi\necho isolated\n", addrB)
	require.NoError(t, os.WriteFile(filepath.Join(a.dir, "probe.sh"), []byte(probe), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(a.dir, "Dockerfile"), []byte("FROM busybox:local\nCOPY probe.sh /probe.sh\n"+
		`CMD ["sh", "-c", "mkdir -p /www && /probe.sh > /www/index.html; exec httpd -f -p 5000 -h /www"]`+"\n"), 0o644))
	a.git("add", ".")
	a.git("commit", "-qm", "a")
	res = deploy(writeTOML(t, defaultTOML+fmt.Sprintf(env, nameA, 6107, `release_command = ["/probe.sh"]`)), a.dir, "grp/a-"+nameA, 612)
	tr := traceLines(res.Trace)
	require.Equal(t, "success", res.State, "a's release command reached b at %s:\n%s", addrB, tr)
	assert.Contains(t, tr, "release command /probe.sh")
	assert.Equal(t, "isolated", httpGet("http://127.0.0.1:6107/"), "a's app reached b at %s", addrB)
	assert.Equal(t, "app b", httpGet("http://127.0.0.1:6106/"), "the proxy serves b")
}
