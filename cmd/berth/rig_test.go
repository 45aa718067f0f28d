package main

// Test helpers for the end-to-end tests: they drive the real gitlab-runner
// (built by ../shared/gitlab-runner/build.sh) against the real engine.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/stretchr/testify/require"
)

// rig is what the end-to-end tests need, found once in TestMain.
type rig struct {
	berth   string // the binary under test
	shared  string // ../shared/gitlab-runner
	glrBin  string // dir with gitlab-runner and fake-gitlab
	docker  *client.Client
	missing string // why the rig is incomplete, if it is
}

var theRig rig

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "berth-e2e-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		flag.Parse()
		if !testing.Short() {
			theRig = findRig(dir)
		}
		return m.Run()
	}()
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func findRig(dir string) rig {
	r := rig{}
	r.shared = os.Getenv("BERTH_SHARED")
	if r.shared == "" {
		r.shared = filepath.Join(repoRoot(), "..", "shared")
	}
	r.shared = filepath.Join(r.shared, "gitlab-runner")
	r.glrBin = os.Getenv("GLR_BIN")
	if r.glrBin == "" {
		home, _ := os.UserHomeDir()
		r.glrBin = filepath.Join(home, ".cache", "gitlab-runner-harness", "bin")
	}
	var err error
	r.docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = r.docker.Ping(ctx)
		cancel()
	}
	switch {
	case err != nil:
		r.missing = "no Docker engine answers (" + err.Error() + "): run `.ci/rig.sh up` or `make test`"
	case !exists(filepath.Join(r.shared, "run-job.sh")):
		r.missing = "no runner harness at " + r.shared + " (set BERTH_SHARED)"
	case !exists(filepath.Join(r.glrBin, "gitlab-runner")) || !exists(filepath.Join(r.glrBin, "fake-gitlab")):
		r.missing = "no gitlab-runner build in " + r.glrBin + ": run `.ci/rig.sh runner` or `make test` (set GLR_BIN)"
	}
	if r.missing != "" {
		return r
	}
	r.berth = filepath.Join(dir, "berth")
	build := exec.Command("go", "build", "-o", r.berth, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as released: the anchor image is made of it
	out, err := build.CombinedOutput()
	if err != nil {
		r.missing = "build berth: " + string(out)
	}
	return r
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// needRig skips a test without the rig, or fails it when BERTH_REQUIRE_RIG=1
// (CI), so a missing engine or runner can never pass silently there.
func needRig(t *testing.T) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no end-to-end tests")
	}
	if theRig.missing != "" {
		if os.Getenv("BERTH_REQUIRE_RIG") == "1" {
			t.Fatalf("end-to-end rig required but missing: %s", theRig.missing)
		}
		t.Skipf("skipping end-to-end test: %s", theRig.missing)
	}
	return &theRig
}

// gitRepo makes a repository with a master and a feature branch.
func gitRepo(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "app")
	run := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	run("init", "-q", "-b", "master")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README"), []byte("app\n"), 0o644))
	run("add", ".")
	run("commit", "-qm", "init")
	run("branch", "feature/x")
	return dir
}

// jobResult is fake-gitlab's result.json.
type jobResult struct {
	State         string `json:"state"`
	FailureReason string `json:"failure_reason"`
	ExitCode      int    `json:"exit_code"`
	Trace         string `json:"trace"`
	JobID         int64  `json:"job_id"`
	out           string // the run's output dir (runner.log, ...)
}

func (j jobResult) RunnerLog(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(j.out, "runner.log"))
	require.NoError(t, err)
	return string(b)
}

// writeTOML writes a berth.toml for one test; builds and cache dirs live in
// the test's temp dir.
func writeTOML(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "berth.toml")
	body := fmt.Sprintf("builds_dir = %q\ncache_dir = %q\nlog_level = \"info\"\n%s", filepath.Join(dir, "builds"), filepath.Join(dir, "cache"), extra)
	if !strings.Contains(extra, "[proxy]") {
		body += testProxy(t)
	}
	require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
	return path
}

// webTOML writes a berth.toml whose web environment is the container name,
// published on 127.0.0.1:port and checked at its /health; extra are more
// lines of [environments.web.container].
func webTOML(t *testing.T, name string, port int, extra ...string) string {
	t.Helper()
	return writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[environments.web]
driver = "container"
[environments.web.container]
name = %q
ports = ["127.0.0.1:%d:5000"]
health_url = "http://127.0.0.1:%[2]d/health"
%s
`, name, port, strings.Join(extra, "\n")))
}

// testProxy is a [proxy] of the test's own, of the rig's caddy:local (no
// Docker Hub here), removed with what it published when the test ends.
func testProxy(t *testing.T) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(t.Name())) // one proxy per test, however many berth.toml it writes
	name := fmt.Sprintf("berth-e2e-proxy-%08x", h.Sum32())
	t.Cleanup(func() { removeProxy(name) })
	return fmt.Sprintf("[proxy]\nimage = \"caddy:local\"\nname = %q\nnetwork = %q\nhost_ip = \"127.0.0.1\"\nhttp_port = 18180\nhttps_port = 18543\n", name, name)
}

// removeProxy removes a test's proxy, its helper, network and volumes.
func removeProxy(name string) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return
	}
	ctx := context.Background()
	for _, n := range []string{name + "-ctl", name} {
		_ = c.ContainerRemove(ctx, n, container.RemoveOptions{Force: true})
	}
	// the test's apps are on its networks still (its own, and one per
	// environment): they go first
	nets := []string{name}
	if list, err := c.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "berth.proxy="+name))}); err == nil {
		for _, n := range list {
			nets = append(nets, n.Name)
		}
	}
	for _, n := range nets {
		if nw, err := c.NetworkInspect(ctx, n, network.InspectOptions{}); err == nil {
			for id := range nw.Containers {
				_ = c.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
			}
		}
		_ = c.NetworkRemove(ctx, n)
	}
	for _, v := range []string{name + "-config", name + "-data"} {
		_ = c.VolumeRemove(ctx, v, true)
	}
}

// runJob renders a payload with job.py and runs it through the real runner
// with berth as the custom executor.
func (r *rig) runJob(t *testing.T, tomlPath string, jobArgs ...string) jobResult {
	t.Helper()
	return r.runJobWith(t, tomlPath, nil, jobArgs...)
}

// runJobWith is runJob with a change to the payload for what job.py cannot
// express (a service's entrypoint, command and variables).
func (r *rig) runJobWith(t *testing.T, tomlPath string, edit func(payload map[string]any), jobArgs ...string) jobResult {
	t.Helper()
	return r.runJobEnv(t, tomlPath, nil, edit, jobArgs...)
}

// runJobEnv is runJobWith with more environment for the runner (and so
// for berth).
func (r *rig) runJobEnv(t *testing.T, tomlPath string, env []string, edit func(payload map[string]any), jobArgs ...string) jobResult {
	t.Helper()
	return r.startJob(t, tomlPath, env, edit, jobArgs...).finish(t)
}

// startedJob is a job running through the runner, in the background.
type startedJob struct {
	cmd    *exec.Cmd
	out    string
	output bytes.Buffer
	cancel context.CancelFunc
}

// startJob starts a job through the runner and returns at once.
func (r *rig) startJob(t *testing.T, tomlPath string, env []string, edit func(payload map[string]any), jobArgs ...string) *startedJob {
	t.Helper()
	out := t.TempDir()
	payload := filepath.Join(out, "job.json")
	cmd := exec.Command(filepath.Join(r.shared, "job.py"), jobArgs...)
	b, err := cmd.Output()
	require.NoError(t, err, "job.py %v", jobArgs)
	if edit != nil {
		var p map[string]any
		require.NoError(t, json.Unmarshal(b, &p))
		edit(p)
		b, err = json.Marshal(p)
		require.NoError(t, err)
	}
	require.NoError(t, os.WriteFile(payload, b, 0o600))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	j := &startedJob{out: out, cancel: cancel}
	j.cmd = exec.CommandContext(ctx, filepath.Join(r.shared, "run-job.sh"), payload, out, "--", r.berth, "--config", tomlPath)
	j.cmd.Env = append(append(os.Environ(), "GLR_BIN="+r.glrBin), env...)
	j.cmd.Stdout, j.cmd.Stderr = &j.output, &j.output
	require.NoError(t, j.cmd.Start())
	return j
}

// finish waits for the job's final state.
func (j *startedJob) finish(t *testing.T) jobResult {
	t.Helper()
	defer j.cancel()
	require.NoError(t, j.cmd.Wait(), "run-job.sh: %s", j.output.String())
	var res jobResult
	data, err := os.ReadFile(filepath.Join(j.out, "result.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &res))
	res.out = j.out
	return res
}

// requireNothingLeft checks that no container or network of the job exists.
func (r *rig) requireNothingLeft(t *testing.T, jobID int64) {
	t.Helper()
	ctx := context.Background()
	f := filters.NewArgs(filters.Arg("label", fmt.Sprintf("berth.job=%d", jobID)))
	// a native job's helper is stopped by cleanup and removed by the
	// `berth spares` it started, a moment later
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		cs, err := r.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		require.NoError(t, err)
		if len(cs) == 0 || time.Now().After(deadline) {
			require.Empty(t, containerNames(cs), "containers left by job %d", jobID)
			break
		}
	}
	byName, err := r.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", fmt.Sprintf("berth-job-%d", jobID)))})
	require.NoError(t, err)
	require.Empty(t, byName, "containers named after job %d", jobID)
	ns, err := r.docker.NetworkList(ctx, network.ListOptions{Filters: f})
	require.NoError(t, err)
	require.Empty(t, ns, "networks left by job %d", jobID)
}

// tracePrefix is what the runner puts before each trace line: a timestamp
// and the stream (00O, 01E, with + for a continuation).
var tracePrefix = regexp.MustCompile(`(?m)^\S+Z \d\d[OE]\+? ?`)

// traceLines is the trace as a user reads it, one output line per line.
func traceLines(trace string) string {
	return tracePrefix.ReplaceAllString(trace, "")
}

var helperBuilds sync.Map // helper name → *helperBuild

type helperBuild struct {
	once sync.Once
	err  error
}

// withHelper builds a driver helper (berth-compose, berth-kube) beside the
// berth under test, where berth looks for it; the first build links docker
// compose or client-go (minutes).
func (r *rig) withHelper(t *testing.T, name string) {
	t.Helper()
	v, _ := helperBuilds.LoadOrStore(name, &helperBuild{})
	b := v.(*helperBuild)
	b.once.Do(func() {
		build := exec.Command("go", "build", "-o", filepath.Join(filepath.Dir(r.berth), name), "../"+name)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	})
	require.NoError(t, b.err)
}

func containerNames(cs []container.Summary) []string {
	var out []string
	for _, c := range cs {
		out = append(out, strings.Join(c.Names, ",")+" ("+c.State+")")
	}
	return out
}
