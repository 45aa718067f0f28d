package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// appRepo is a repository whose Dockerfile builds the example app's image
// with a version of its own; commit changes the version.
type appRepo struct {
	t   *testing.T
	dir string
}

func newAppRepo(t *testing.T) *appRepo {
	r := &appRepo{t: t, dir: filepath.Join(t.TempDir(), "app")}
	require.NoError(t, os.MkdirAll(r.dir, 0o755))
	r.git("init", "-q", "-b", "master")
	return r
}

func (r *appRepo) git(args ...string) string {
	cmd := exec.Command("git", args...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
	out, err := cmd.CombinedOutput()
	require.NoError(r.t, err, string(out))
	return strings.TrimSpace(string(out))
}

func (r *appRepo) commit(version string) {
	require.NoError(r.t, os.WriteFile(filepath.Join(r.dir, "Dockerfile"), []byte("FROM web:local\nENV APP_VERSION="+version+"\n"), 0o644))
	r.git("add", ".")
	r.git("commit", "-qm", version)
}

func httpGet(url string) string {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// The classic pipeline of issue 3 with no docker commands in the scripts.
func TestE2EPipelineDeployAndRelease(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	web := fmt.Sprintf("berth-e2e-web-%d", time.Now().UnixNano()%1e8)
	image := "127.0.0.1:5000/berth-e2e/" + web
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = %q

[environments.web]
driver = "container"
[environments.web.container]
name = %q
ports = ["127.0.0.1:6100:5000"]
health_url = "http://127.0.0.1:6100/health"
health_timeout = "10s"
stop_timeout = "2s"

[environments.prod]
driver = "kube"
manual = true
protected = true
`, image, web))
	t.Cleanup(func() { removeByName(r, web) })
	job := func(args ...string) jobResult {
		t.Helper()
		res := r.runJob(t, toml, append([]string{"--repo", repo.dir}, args...)...)
		r.requireNothingLeft(t, res.JobID)
		return res
	}

	for _, stage := range []string{"style", "test"} {
		res := job("--ref", "master", "--stage", stage, "--image", "busybox:local", "--script", "test -f Dockerfile")
		require.Equal(t, "success", res.State, traceLines(res.Trace))
	}

	res := job("--ref", "master", "--stage", "deploy", "--image", "busybox:local", "--script", "echo must not run")
	tr := traceLines(res.Trace)
	require.Equal(t, "success", res.State, tr)
	assert.Contains(t, tr, "stage deploy is native (deploy): the job's script lines are not run")
	assert.Contains(t, tr, "no job container needed")
	assert.NotContains(t, tr, "\nmust not run")
	assert.Regexp(t, `berth: done in \S+: web runs 127\.0\.0\.1:5000/berth-e2e/\S+@sha256:[0-9a-f]{64} \(latest\)`, tr)
	assert.NotContains(t, tr, "publishes its ports itself", "berth's own binary makes the proxy's helper")
	assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6100/"))
	proxy, err := exec.Command("docker", "ps", "--filter", "publish=6100", "--format", "{{.Names}} {{.Label \"berth.role\"}}").CombinedOutput()
	require.NoError(t, err, string(proxy))
	assert.Regexp(t, `^berth-e2e-proxy-\S+ proxy\n$`, string(proxy), "the proxy publishes the port")
	bindings, err := exec.Command("docker", "inspect", "-f", "{{json .HostConfig.PortBindings}}", web).CombinedOutput()
	require.NoError(t, err, string(bindings))
	assert.Regexp(t, `^(\{\}|null)\n$`, string(bindings), "the app publishes nothing")

	repo.commit("v2")
	res = job("--ref", "master", "--stage", "deploy", "--image", "busybox:local", "--after-script", "echo after deploy: $CI_JOB_STATUS")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Contains(t, traceLines(res.Trace), "\nafter deploy: success\n", "after_script still runs in the job's container")
	assert.Equal(t, "app v2", httpGet("http://127.0.0.1:6100/"))

	// release on a tag of the deployed commit: promoted, not rebuilt
	repo.git("tag", "v1.0.0")
	res = job("--tag", "v1.0.0", "--stage", "release", "--image", "busybox:local")
	tr = traceLines(res.Trace)
	require.Equal(t, "success", res.State, tr)
	assert.Contains(t, tr, "promoted "+image+":latest to "+image+":v1.0.0, same digest")
	assert.NotContains(t, tr, "berth: build ")

	// prod is manual: a deploy without CI_JOB_MANUAL is refused
	res = job("--tag", "v1.0.0", "--stage", "deploy", "--image", "busybox:local")
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, traceLines(res.Trace), "environment prod deploys only from a manual job")

	// rollback as a job
	res = job("--ref", "master", "--stage", "deploy", "--image", "busybox:local", "--var", "BERTH_ACTION=rollback")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6100/"))

	// and the operator commands see the same truth at the target
	out, err := exec.Command(r.berth, "--config", toml, "history", "web").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "rolled back by")
	assert.Contains(t, string(out), "serving")
	out, err = exec.Command(r.berth, "--config", toml, "rollback", "web").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Equal(t, "app v2", httpGet("http://127.0.0.1:6100/"))
}

func TestE2EHostileRefIsRefused(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	repo.git("branch", "team/evil")
	toml := writeTOML(t, defaultTOML+`
[[flows]]
name = "any"
branch = ".*"
image_tag = "{ref}-build"
environment = "web"
`)
	res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "team/evil", "--stage", "deploy", "--image", "busybox:local")
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, traceLines(res.Trace), `ref "team/evil" cannot be an image tag: it contains a slash`)
	assert.Equal(t, "script_failure", res.FailureReason)
	r.requireNothingLeft(t, res.JobID)
	long := strings.Repeat("x", 140)
	repo.git("branch", long)
	res = r.runJob(t, toml, "--repo", repo.dir, "--ref", long, "--stage", "deploy", "--image", "busybox:local")
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, traceLines(res.Trace), "cannot be an image tag: it is 146 characters long")
	r.requireNothingLeft(t, res.JobID)
}

// removeByName removes every container whose name contains name.
func removeByName(r *rig, name string) {
	out, _ := exec.Command("docker", "ps", "-aq", "--filter", "name="+name).Output()
	for _, id := range strings.Fields(string(out)) {
		_ = exec.Command("docker", "rm", "-f", id).Run()
	}
	_ = exec.Command("docker", "rm", "-f", "berth-lock-web").Run()
}

func TestE2ERegistryDownLeavesTheRunningContainer(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	web := fmt.Sprintf("berth-e2e-reg-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, web) })
	env := fmt.Sprintf(`
[environments.web]
driver = "container"
[environments.web.container]
name = %q
ports = ["127.0.0.1:6101:5000"]
health_url = "http://127.0.0.1:6101/health"
`, web)
	good := writeTOML(t, defaultTOML+fmt.Sprintf("[registry]\nimage = \"127.0.0.1:5000/berth-e2e/%s\"\n", web)+env)
	res := r.runJob(t, good, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--image", "busybox:local")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	before, err := exec.Command("docker", "inspect", "-f", "{{.Id}}", web).Output()
	require.NoError(t, err)

	repo.commit("v2")
	down := writeTOML(t, defaultTOML+fmt.Sprintf("[registry]\nimage = \"127.0.0.1:5999/berth-e2e/%s\"\nretries = 1\n", web)+env)
	res = r.runJob(t, down, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--image", "busybox:local")
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, traceLines(res.Trace), "push 127.0.0.1:5999/berth-e2e/"+web+":latest failed")
	after, err := exec.Command("docker", "inspect", "-f", "{{.Id}}", web).Output()
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after), "the running container is untouched")
	assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6101/"))
	r.requireNothingLeft(t, res.JobID)
}

// rigSSHKey is the key of the rig's sshd on 127.0.0.1:2222 (root).
func rigSSHKey(t *testing.T) string {
	t.Helper()
	rigDir := os.Getenv("BERTH_RIG_DIR")
	if rigDir == "" {
		rigDir = "/var/tmp/berth-rig"
	}
	key := filepath.Join(rigDir, "ssh", "id")
	if !exists(key) {
		if os.Getenv("BERTH_REQUIRE_RIG") == "1" {
			t.Fatalf("no rig sshd key at %s: run .ci/rig.sh sshd", key)
		}
		t.Skipf("no rig sshd (run .ci/rig.sh sshd)")
	}
	return key
}

// A target reached over ssh://, through docker's own connection helper, to
// the rig's sshd on loopback (.ci/rig.sh sshd).
func TestE2EDeployToSSHDockerHost(t *testing.T) {
	r := needRig(t)
	key := rigSSHKey(t)
	repo := newAppRepo(t)
	repo.commit("over-ssh")
	web := fmt.Sprintf("berth-e2e-ssh-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, web) })
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/%[1]s"
[environments.web]
driver = "container"
docker_host = "ssh://root@127.0.0.1:2222"
ssh_options = ["-i", %[2]q, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
[environments.web.container]
name = %[1]q
ports = ["127.0.0.1:6102:5000"]
health_url = "http://127.0.0.1:6102/health"
`, web, key))
	res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--image", "busybox:local")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app over-ssh", httpGet("http://127.0.0.1:6102/"))
	out, err := exec.Command(r.berth, "--config", toml, "history", "web").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "serving")
	r.requireNothingLeft(t, res.JobID)
}

// An older pipeline's deploy does not overwrite a newer one's; a rollback
// goes back on purpose.
func TestE2ENoDeployGoesBackwards(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	name := fmt.Sprintf("berth-e2e-back-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	toml := webTOML(t, name, 6117)
	deploy := func(pipeline int, extra ...string) jobResult {
		res := r.runJob(t, toml, append([]string{"--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--project-path", "grp/" + name,
			"--pipeline", fmt.Sprint(pipeline)}, extra...)...)
		r.requireNothingLeft(t, res.JobID)
		return res
	}
	repo.commit("old")
	repo.commit("new")
	res := deploy(20)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	res = deploy(19)
	assert.Equal(t, "failed", res.State)
	assert.Contains(t, traceLines(res.Trace), "serves latest from pipeline 20, newer than this pipeline 19 (both master flow)")
	assert.Equal(t, "app new", httpGet("http://127.0.0.1:6117/"))
	res = deploy(21)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	res = deploy(19, "--var", "BERTH_ACTION=rollback")
	require.Equal(t, "success", res.State, "a rollback is on purpose: %s", traceLines(res.Trace))
}
