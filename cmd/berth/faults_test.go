package main

// Faults: a cancelled, killed or failing deploy always leaves the last good
// version serving, the records true and nothing behind. berth pauses at a
// named step (BERTH_TEST_PAUSE_AT, stages/pause.go) and the test signals it
// there, as the runner's graceful and force kills would.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pause is the environment that makes berth wait at step, and the file it
// writes its pid to there.
func pause(t *testing.T, step string) ([]string, string) {
	file := filepath.Join(t.TempDir(), "paused")
	return []string{driver.PauseAtEnv + "=" + step, driver.PauseFileEnv + "=" + file}, file
}

// pausedPID waits until berth reached its pause and returns its pid.
func pausedPID(t *testing.T, file string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(file)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}, 90*time.Second, 20*time.Millisecond, "berth never reached its pause")
	return pid
}

// envLeftovers checks that a container environment has nothing of a
// switch left: no container being switched to, no lock, no journal.
func envLeftovers(t *testing.T, r *rig, name string) {
	t.Helper()
	ctx := context.Background()
	list, err := r.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name))})
	require.NoError(t, err)
	for _, c := range list {
		n := strings.TrimPrefix(c.Names[0], "/")
		assert.NotContains(t, n, "-new-", "a container of an unfinished switch: %s", n)
		assert.NotEqual(t, driver.LockName(name), n, "the lock is released")
	}
	led, _, err := target.ReadLedger(ctx, r.docker, "web", name)
	require.NoError(t, err)
	assert.Nil(t, led.Switch, "the ledger has no unfinished switch")
}

// A deploy killed at each step of its switch, with SIGTERM (the runner
// cancels the job: berth undoes) and SIGKILL (the runner's force kill:
// the job's cleanup puts it right): the previous version serves again, or
// the new one where it had taken over and is healthy.
func TestE2EKilledContainerDeploy(t *testing.T) {
	for _, m := range []struct {
		portsOn string
		port    int
		steps   []string
	}{
		{"anchor", 6111, []string{"create", "journal", "stop-old", "rename-old", "start-anchor", "rename-new", "start-new", "record"}},
		{"proxy", 6117, []string{"journal", "create-1", "start-1", "route-1", "stop-old-1", "record"}},
	} {
		t.Run(m.portsOn, func(t *testing.T) { killedContainerDeploy(t, m.portsOn, m.port, m.steps) })
	}
}

func killedContainerDeploy(t *testing.T, portsOn string, port int, steps []string) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v0")
	name := fmt.Sprintf("berth-e2e-fault-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	toml := webTOML(t, name, port, `health_timeout = "10s"`, `stop_timeout = "2s"`, "keep = 1", fmt.Sprintf("ports_on = %q", portsOn))
	project := "grp/" + name
	deploy := func(env []string) *startedJob {
		return r.startJob(t, toml, env, nil, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--project-path", project)
	}
	res := deploy(nil).finish(t)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	require.Equal(t, "app v0", httpGet(url))

	// after these steps the new version has taken over and is healthy
	tookOver := map[string]bool{"record": true}
	n := 0
	for _, step := range steps {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(step+"/"+sig.String(), func(t *testing.T) {
				before := httpGet(url)
				n++
				version := fmt.Sprintf("v%d", n)
				repo.commit(version)
				env, file := pause(t, "deploy:"+step)
				job := deploy(env)
				pid := pausedPID(t, file)
				require.NoError(t, syscall.Kill(pid, sig))
				res := job.finish(t)
				tr := traceLines(res.Trace)
				want := before
				if tookOver[step] {
					want = "app " + version
				}
				assert.Equal(t, want, httpGet(url), "what serves after %s at %s:\n%s", sig, step, tr)
				if !tookOver[step] {
					assert.Equal(t, "failed", res.State)
				}
				if sig == syscall.SIGTERM && !tookOver[step] {
					assert.Contains(t, tr, "cancelled at step "+step)
				}
				r.requireNothingLeft(t, res.JobID)
				envLeftovers(t, r, name)
				out, err := exec.Command(r.berth, "--config", toml, "history", "web").CombinedOutput()
				require.NoError(t, err, string(out))
				assert.Contains(t, string(out), "serving")
				if sig == syscall.SIGKILL && step != "create" && step != "journal" && step != "create-1" && !tookOver[step] {
					assert.Contains(t, string(out), "interrupted, previous restored", "the history says what happened")
				}
			})
		}
	}
	// and the environment deploys on as usual
	repo.commit("after")
	res = deploy(nil).finish(t)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app after", httpGet(url))
}

// `berth rollback` killed at each step: SIGTERM puts the current version
// back; after SIGKILL (no cleanup runs for an operator's command) the next
// `berth rollback` puts it right first, then rolls back.
func TestE2EKilledRollback(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	name := fmt.Sprintf("berth-e2e-rbfault-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	toml := webTOML(t, name, 6112, `health_timeout = "10s"`, `stop_timeout = "2s"`, "keep = 3", `ports_on = "anchor"`)
	for _, v := range []string{"one", "two"} {
		repo.commit(v)
		res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--project-path", "grp/"+name)
		require.Equal(t, "success", res.State, traceLines(res.Trace))
	}
	rollback := func(env []string) *exec.Cmd {
		cmd := exec.Command(r.berth, "--config", toml, "rollback", "web")
		cmd.Env = append(os.Environ(), env...)
		return cmd
	}
	for _, step := range []string{"journal", "stop-current", "rename-current", "rename-target", "start-target", "record"} {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(step+"/"+sig.String(), func(t *testing.T) {
				before := httpGet("http://127.0.0.1:6112/")
				other := map[string]string{"app one": "app two", "app two": "app one"}[before]
				require.NotEmpty(t, other, "serves %q", before)
				env, file := pause(t, "rollback:"+step)
				cmd := rollback(env)
				var out strings.Builder
				cmd.Stdout, cmd.Stderr = &out, &out
				require.NoError(t, cmd.Start())
				require.NoError(t, syscall.Kill(pausedPID(t, file), sig))
				_ = cmd.Wait()
				switch {
				case step == "record":
					assert.Equal(t, other, httpGet("http://127.0.0.1:6112/"), "it had rolled back: %s", out.String())
				case sig == syscall.SIGTERM:
					assert.Equal(t, before, httpGet("http://127.0.0.1:6112/"), "undone at once: %s", out.String())
				}
				envLeftoversButLock := func() {
					led, _, err := target.ReadLedger(context.Background(), r.docker, "web", name)
					require.NoError(t, err)
					if sig == syscall.SIGTERM {
						assert.Nil(t, led.Switch)
					}
				}
				envLeftoversButLock()
				// the next rollback puts right what was left, then rolls back
				next, err := rollback(nil).CombinedOutput()
				require.NoError(t, err, string(next))
				if sig == syscall.SIGKILL && step != "record" && step != "journal" {
					assert.Contains(t, string(next), "did not finish: putting it right first")
				}
				// a rollback that got to its record stands, and the next one
				// goes back; any other was put back, and the next one rolls back
				want := other
				if step == "record" {
					want = before
				}
				assert.Equal(t, want, httpGet("http://127.0.0.1:6112/"), string(next))
				envLeftovers(t, r, name)
			})
		}
	}
}

// A compose deploy cancelled or killed while its project comes up: the
// previous digest serves again, and the ledger says the deploy was
// interrupted.
func TestE2EKilledComposeDeploy(t *testing.T) {
	r := needRig(t)
	r.withHelper(t, "berth-compose")
	project := fmt.Sprintf("berthfault%d", time.Now().UnixNano()%1e8)
	repo := newAppRepo(t)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(fmt.Sprintf(
		"services:\n  web:\n    image: 127.0.0.1:5000/berth-e2e/grp/%s:develop\n    ports: [\"127.0.0.1:6113:5000\"]\n", project)), 0o644))
	repo.commit("c0")
	repo.git("checkout", "-qb", "develop")
	removeComposeProject(t, project)
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[environments.integration]
driver = "compose"
[environments.integration.compose]
project = %q
wait_timeout = "30s"
`, project))
	deploy := func(env []string) *startedJob {
		return r.startJob(t, toml, env, nil, "--repo", repo.dir, "--ref", "develop", "--stage", "deploy", "--project-path", "grp/"+project)
	}
	res := deploy(nil).finish(t)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		repo.commit(fmt.Sprintf("c%d", i+1))
		env, file := pause(t, "deploy:up")
		job := deploy(env)
		require.NoError(t, syscall.Kill(pausedPID(t, file), sig))
		res := job.finish(t)
		assert.Equal(t, "failed", res.State)
		assert.Equal(t, "app c0", httpGet("http://127.0.0.1:6113/"), "%s: the previous digest serves: %s", sig, traceLines(res.Trace))
		r.requireNothingLeft(t, res.JobID)
		out, err := exec.Command(r.berth, "--config", toml, "history", "integration").CombinedOutput()
		require.NoError(t, err, string(out))
		assert.Contains(t, string(out), "interrupted, previous restored")
		led, _, err := target.ReadLedger(context.Background(), r.docker, "integration", "compose-"+project)
		require.NoError(t, err)
		assert.Nil(t, led.Switch)
		_, err = r.docker.ContainerInspect(context.Background(), driver.LockName("compose-"+project))
		assert.Error(t, err, "the lock is released")
	}
}

// The registry goes away during a push and during a promotion: the host's
// fault (the runner retries the job), retried first with the attempts in
// the log, and nothing on the target changes.
func TestE2ERegistryStoppedDuringPushAndPromotion(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	name := fmt.Sprintf("berth-e2e-regdown-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	t.Cleanup(func() { _ = exec.Command(filepath.Join(repoRoot(), ".ci", "rig.sh"), "registry").Run() })
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
retries = 2
[environments.web]
driver = "container"
[environments.web.container]
name = %q
ports = ["127.0.0.1:6114:5000"]
health_url = "http://127.0.0.1:6114/health"
`, name))
	args := []string{"--repo", repo.dir, "--project-path", "grp/" + name}
	res := r.runJob(t, toml, append(args, "--ref", "master", "--stage", "deploy")...)
	require.Equal(t, "success", res.State, traceLines(res.Trace))

	rig := filepath.Join(repoRoot(), ".ci", "rig.sh")
	for _, c := range []struct{ name, step string }{
		{"push", "--stage deploy"},
		{"promotion", "--stage release --tag v1.0.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "promotion" {
				repo.git("tag", "-f", "v1.0.0")
			} else {
				repo.commit("v2")
			}
			out, err := exec.Command(rig, "registry-stop").CombinedOutput()
			require.NoError(t, err, string(out))
			jobArgs := append(append([]string{}, args...), strings.Fields(c.step)...)
			if c.name == "push" {
				jobArgs = append(jobArgs, "--ref", "master")
			}
			res := r.runJob(t, toml, jobArgs...)
			out, err = exec.Command(rig, "registry").CombinedOutput()
			require.NoError(t, err, string(out))
			tr := traceLines(res.Trace)
			assert.Equal(t, "failed", res.State)
			assert.Equal(t, "runner_system_failure", res.FailureReason, "the host's fault: %s", tr)
			assert.Contains(t, tr, "retry 1/2", "retried, with the attempts in the log")
			assert.Equal(t, "app v1", httpGet("http://127.0.0.1:6114/"), "what served still serves")
			r.requireNothingLeft(t, res.JobID)
		})
	}
}

// An ssh target that does not answer is the host's fault, and changes
// nothing.
func TestE2EUnreachableSSHTarget(t *testing.T) {
	r := needRig(t)
	key := rigSSHKey(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = "127.0.0.1:5000/berth-e2e/{project}"
[environments.web]
driver = "container"
docker_host = "ssh://root@127.0.0.1:2299"
ssh_options = ["-i", %q, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2"]
[environments.web.container]
name = "berth-e2e-nossh"
ports = ["127.0.0.1:6115:5000"]
`, key))
	res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--project-path", "grp/nossh")
	tr := traceLines(res.Trace)
	assert.Equal(t, "failed", res.State)
	assert.Equal(t, "runner_system_failure", res.FailureReason, tr)
	r.requireNothingLeft(t, res.JobID)
}

// dockerd restarts in the middle of a deploy: every container stops; the
// engine starts those that should run again; berth goes on, and what
// serves afterwards is the previous version or the new, healthy one.
func TestE2EEngineRestartDuringADeploy(t *testing.T) {
	for _, m := range []struct {
		portsOn, step string
		port          int
	}{{"anchor", "start-new", 6116}, {"proxy", "route-1", 6118}} {
		t.Run(m.portsOn, func(t *testing.T) { engineRestartDuringADeploy(t, m.portsOn, m.step, m.port) })
	}
}

// engineRestartDuringADeploy: dockerd restarts while berth waits at step;
// afterwards something good serves (behind the proxy: the proxy and the
// app came back by themselves), and the next deploy works.
func engineRestartDuringADeploy(t *testing.T, portsOn, step string, port int) {
	r := needRig(t)
	repo := newAppRepo(t)
	repo.commit("v1")
	name := fmt.Sprintf("berth-e2e-restart-%d", time.Now().UnixNano()%1e8)
	t.Cleanup(func() { removeByName(r, name) })
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	toml := webTOML(t, name, port, `health_timeout = "20s"`, `restart = "unless-stopped"`, fmt.Sprintf("ports_on = %q", portsOn))
	args := []string{"--repo", repo.dir, "--ref", "master", "--stage", "deploy", "--project-path", "grp/" + name}
	res := r.runJob(t, toml, args...)
	require.Equal(t, "success", res.State, traceLines(res.Trace))

	repo.commit("v2")
	env, file := pause(t, "deploy:"+step)
	job := r.startJob(t, toml, env, nil, args...)
	pausedPID(t, file)
	out, err := exec.Command(filepath.Join(repoRoot(), ".ci", "rig.sh"), "engine-restart").CombinedOutput()
	require.NoError(t, err, string(out))
	if portsOn == "proxy" {
		// dockerd starts the proxy and its ctl at once, and the ctl, which
		// joins the proxy's network namespace, stays stopped when it comes
		// first: make that so every time
		ctls, err := r.docker.ContainerList(context.Background(), container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "berth.role=proxy-ctl"))})
		require.NoError(t, err)
		for _, c := range ctls {
			require.NoError(t, r.docker.ContainerStop(context.Background(), c.ID, container.StopOptions{}))
		}
	}
	require.NoError(t, os.Remove(file)) // go on
	res = job.finish(t)
	var got string
	require.Eventually(t, func() bool { got = httpGet(url); return strings.HasPrefix(got, "app v") }, 20*time.Second, 200*time.Millisecond,
		"something serves again: %s", traceLines(res.Trace))
	assert.Contains(t, []string{"app v1", "app v2"}, got, "something good serves: %s", traceLines(res.Trace))
	if res.State == "success" {
		assert.Equal(t, "app v2", got)
	}
	envLeftovers(t, r, name)
	repo.commit("v3")
	res = r.runJob(t, toml, args...)
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app v3", httpGet(url))
}
