package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/local"
)

// exampleRepo is examples/app as a repository with the flow's refs:
// master, develop, release-1.0.0 and the tag v1.0.0.
func exampleRepo(t *testing.T) *appRepo {
	r := &appRepo{t: t, dir: filepath.Join(t.TempDir(), "app")}
	require.NoError(t, exec.Command("cp", "-r", filepath.Join(repoRoot(), "examples", "app"), r.dir).Run())
	build := exec.Command("go", "build", "-o", "app", ".")
	build.Dir, build.Env = r.dir, append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	r.git("init", "-q", "-b", "master")
	exampleVersion(r, "0.9.0")
	r.git("checkout", "-qb", "develop")
	exampleVersion(r, "1.0.0-dev")
	r.git("checkout", "-qb", "release-1.0.0")
	exampleVersion(r, "1.0.0")
	r.git("tag", "v1.0.0")
	r.git("checkout", "-q", "master")
	r.git("merge", "-q", "--no-ff", "-m", "merge", "release-1.0.0")
	return r
}

// exampleVersion commits a change that makes the example app report v.
func exampleVersion(r *appRepo, v string) {
	df := filepath.Join(r.dir, "Dockerfile")
	b, err := os.ReadFile(df)
	require.NoError(r.t, err)
	body := regexp.MustCompile(`(?m)^ENV APP_VERSION=.*\n`).ReplaceAllString(string(b), "") + "ENV APP_VERSION=" + v + "\n"
	require.NoError(r.t, os.WriteFile(df, []byte(body), 0o644))
	r.git("add", "-A")
	r.git("commit", "-qm", v)
}

// flowTOML gives one side of the comparison its own registry repository,
// compose project and containers.
func flowTOML(t *testing.T, side string, port int) string {
	return writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-flow/%[1]s"
[environments.integration]
driver = "compose"
[environments.integration.compose]
project = "berth-flow-%[1]s"
files = ["compose.yaml"]
services = ["web"]
[environments.alpha]
driver = "container"
[environments.alpha.container]
name = "berth-flow-%[1]s-alpha"
[environments.web]
driver = "container"
[environments.web.container]
name = "berth-flow-%[1]s-web"
ports = ["127.0.0.1:%[2]d:5000"]
health_url = "http://127.0.0.1:%[2]d/health"
`, side, port))
}

// serving is what an environment runs, as berth history says: ref, tag.
func serving(t *testing.T, r *rig, toml, env string) string {
	out, err := exec.Command(r.berth, "--config", toml, "history", env).CombinedOutput()
	require.NoError(t, err, string(out))
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 3 && strings.Contains(l, " serving ") {
			return f[1] + " " + f[2]
		}
	}
	return "nothing: " + string(out)
}

// The flow of examples/app, once with berth exec and once job by job
// through the real gitlab-runner: same results, same deployments.
func TestExecAndTheRunnerAgree(t *testing.T) {
	r := needRig(t)
	r.withHelper(t, "berth-compose")
	repo := exampleRepo(t)
	side := fmt.Sprintf("%d", time.Now().UnixNano()%1e7)
	execTOML, runnerTOML := flowTOML(t, "x"+side, 6105), flowTOML(t, "r"+side, 6106)
	removeComposeProject(t, "berth-flow-x"+side)
	removeComposeProject(t, "berth-flow-r"+side)
	t.Cleanup(func() {
		removeByName(r, "berth-flow-x"+side)
		removeByName(r, "berth-flow-r"+side)
	})
	// the compose file's web: a port and repository of each side's own
	compose := func(s string, port int) {
		body := fmt.Sprintf("services:\n  web:\n    image: 127.0.0.1:5000/berth-flow/%s:develop\n    ports: [\"127.0.0.1:%d:5000\"]\n", s, port)
		require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(body), 0o644))
	}
	planFor := func(ref local.Ref) *local.Plan {
		ctx := &local.Context{Ref: ref, Repo: repo.dir, Vars: local.PredefinedForRef(ref, "local/app", "master")}
		p, err := local.Load(repo.dir, ".gitlab-ci.yml", ctx)
		require.NoError(t, err)
		pl, err := p.Plan(ctx)
		require.NoError(t, err)
		return pl
	}

	master := local.Ref{Name: "master"}
	runs := []struct {
		ref    local.Ref
		jobs   []string // none: every job that runs for the ref
		manual bool
		before func()
		serves string // what web serves afterwards, on both sides
	}{
		{ref: local.Ref{Name: "develop"}},
		{ref: local.Ref{Name: "release-1.0.0"}},
		{ref: local.Ref{Name: "v1.0.0", IsTag: true}},
		{ref: master, serves: "app 1.0.0"},
		{ref: master, jobs: []string{"deploy"}, before: func() { exampleVersion(repo, "1.0.1") }, serves: "app 1.0.1"},
		{ref: master, jobs: []string{"rollback"}, manual: true, serves: "app 1.0.0"},
	}
	summaryRe := regexp.MustCompile(`(?m)^(\S+)\s+(style|test|deploy|release)\s+(success|failed\S*|skipped)`)
	for _, run := range runs {
		if run.before != nil {
			run.before()
		}
		// compose.yaml is read from the checkout: commit each side's own
		// onto the ref (develop only deploys to compose)
		args := []string{"--ref", run.ref.Name}
		if run.ref.IsTag {
			args = []string{"--tag", run.ref.Name}
		}
		execArgs := append([]string{}, args...)
		if run.manual {
			args = append(args, "--manual")
			execArgs = append(execArgs, "--manual")
		}
		execArgs = append(execArgs, run.jobs...)
		if run.ref.Name == "develop" {
			repo.git("checkout", "-q", "develop")
			compose("x"+side, 6107)
			repo.git("commit", "-qam", "exec side")
		}
		cmd := exec.Command(r.berth, append([]string{"--config", execTOML, "exec"}, execArgs...)...)
		cmd.Dir = repo.dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
		execResults := map[string]string{}
		for _, m := range summaryRe.FindAllStringSubmatch(string(out), -1) {
			execResults[m[1]] = m[3]
		}

		if run.ref.Name == "develop" {
			compose("r"+side, 6108)
			repo.git("commit", "-qam", "runner side")
		}
		runnerResults := map[string]string{}
		for _, pj := range planFor(run.ref).Jobs {
			j := pj.Job
			named := len(run.jobs) == 0 || slices.Contains(run.jobs, j.Name)
			if (pj.When == "manual" && !run.manual) || !named {
				continue
			}
			jobArgs := append([]string{"--repo", repo.dir, "--stage", j.Stage, "--name", j.Name, "--image", j.Image}, args...)
			for _, s := range j.Services {
				jobArgs = append(jobArgs, "--service", s.Image+"="+s.Alias)
			}
			for _, l := range j.Script {
				jobArgs = append(jobArgs, "--script", l)
			}
			for _, v := range j.Variables {
				jobArgs = append(jobArgs, "--var", v.Key+"="+v.Value)
			}
			res := r.runJob(t, runnerTOML, jobArgs...)
			runnerResults[j.Name] = res.State
			require.Equal(t, "success", res.State, traceLines(res.Trace))
		}
		if run.ref.Name == "develop" {
			repo.git("checkout", "-q", "master")
		}
		assert.Equal(t, runnerResults, execResults, "%s: the same jobs, the same results", run.ref.Name)
		if run.serves != "" {
			assert.Equal(t, run.serves, httpGet("http://127.0.0.1:6105/"), "berth exec's web")
			assert.Equal(t, run.serves, httpGet("http://127.0.0.1:6106/"), "the runner's web")
		}
	}
	for _, env := range []string{"integration", "alpha", "web"} {
		assert.Equal(t, serving(t, r, runnerTOML, env), serving(t, r, execTOML, env), "%s: the same deployment", env)
	}
}
