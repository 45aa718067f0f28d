package bench

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fault table of issue 11: a fault injected into a deploy through the
// real runner, and how long until the environment serves again. berth
// pauses at a named step (BERTH_TEST_PAUSE_AT, stages/pause.go) for the
// fault to strike there. "needs a human" is an environment that does not
// answer a minute after the fault.

const faultPort = "6120"

// faultEnv is one environment under faults: a repository, a berth.toml
// and a deploy job through the runner.
type faultEnv struct {
	e    *env
	glr  string
	repo string
	toml string
	n    int
}

func newFaultEnv(b *testing.B, envTOML string) *faultEnv {
	e := setup(b)
	glr := os.Getenv("GLR_BIN")
	if glr == "" {
		b.Skip("GLR_BIN is not set: run make bench")
	}
	f := &faultEnv{e: e, glr: glr, repo: filepath.Join(e.dir, "fault-app")}
	must(b, os.MkdirAll(f.repo, 0o755))
	f.git(b, "init", "-q", "-b", "master")
	f.toml = filepath.Join(e.dir, "fault.toml")
	must(b, os.WriteFile(f.toml, []byte(fmt.Sprintf("builds_dir = %q\ncache_dir = %q\n[job]\ndefault_image = \"busybox:local\"\nhelper_image = \"berth-helper:local\"\n[registry]\nimage = \"127.0.0.1:5000/berth-bench/{project}\"\nretries = 1\n[proxy]\nimage = \"caddy:local\"\nname = \"bench-proxy\"\nnetwork = \"bench-proxy\"\n%s",
		filepath.Join(e.dir, "builds"), filepath.Join(e.dir, "cache"), envTOML)), 0o644))
	return f
}

func (f *faultEnv) git(b *testing.B, args ...string) {
	cmd := exec.Command("git", append([]string{"-C", f.repo}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.com", "GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.com")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("git %v: %v: %s", args, err, out)
	}
}

func (f *faultEnv) commit(b *testing.B, files map[string]string) {
	for name, body := range files {
		must(b, os.WriteFile(filepath.Join(f.repo, name), []byte(body), 0o644))
	}
	f.git(b, "add", ".")
	f.git(b, "commit", "-qm", "v")
}

// version commits a release of the app that answers "app v".
func (f *faultEnv) version(b *testing.B, v string) {
	f.commit(b, map[string]string{"Dockerfile": "FROM web:local\nENV APP_VERSION=" + v + "\n"})
}

// start runs a deploy job of ref through the runner, paused at step if set.
func (f *faultEnv) start(b *testing.B, ref, step string) (*exec.Cmd, string) {
	f.n++
	out, err := exec.Command(filepath.Join(f.e.shared, "job.py"), "--repo", f.repo, "--ref", ref, "--stage", "deploy",
		"--project-path", "bench/faults", "--id", fmt.Sprint(newID())).Output()
	must(b, err)
	p := filepath.Join(f.e.dir, fmt.Sprintf("fault-%d.json", f.n))
	must(b, os.WriteFile(p, out, 0o600))
	pauseFile := p + ".paused"
	c := exec.Command(filepath.Join(f.e.shared, "run-job.sh"), p, p+".out", "--", f.e.drivers[0].exe, "--config", f.toml)
	c.Env = append(os.Environ(), "GLR_BIN="+f.glr)
	if step != "" {
		c.Env = append(c.Env, "BERTH_TEST_PAUSE_AT="+step, "BERTH_TEST_PAUSE_FILE="+pauseFile)
	}
	must(b, c.Start())
	return c, pauseFile
}

func (f *faultEnv) deploy(b *testing.B, ref string) {
	c, _ := f.start(b, ref, "")
	must(b, c.Wait())
}

// pausedPID waits for berth to reach its pause; if the job ends first, it
// fails with the end of the job's log, which says why.
func pausedPID(b *testing.B, file string) int {
	out := strings.TrimSuffix(file, ".paused") + ".out"
	for end := time.Now().Add(90 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if data, err := os.ReadFile(file); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
				return pid
			}
		}
		if _, err := os.Stat(filepath.Join(out, "result.json")); err == nil {
			b.Fatalf("the job ended before berth reached its pause:\n%s", jobLogTail(out))
		}
	}
	b.Fatal("berth never reached its pause")
	return 0
}

// jobLogTail is the end of the job log in a run-job.sh result.
func jobLogTail(out string) string {
	data, err := os.ReadFile(filepath.Join(out, "result.json"))
	if err != nil {
		return err.Error()
	}
	var res struct{ Trace string }
	if err := json.Unmarshal(data, &res); err != nil {
		return err.Error()
	}
	lines := strings.Split(res.Trace, "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// servesAgain reports how long after the fault url answers "app ...", and
// whether it ever did within a minute.
func servesAgain(b *testing.B, url string, since time.Time) {
	c := &http.Client{Timeout: 500 * time.Millisecond}
	for time.Since(since) < time.Minute {
		if resp, err := c.Get(url); err == nil {
			var buf [64]byte
			n, _ := resp.Body.Read(buf[:])
			resp.Body.Close()
			if strings.HasPrefix(string(buf[:n]), "app ") {
				b.ReportMetric(time.Since(since).Seconds(), "serving-s")
				b.ReportMetric(0, "needs-human")
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.ReportMetric(time.Minute.Seconds(), "serving-s")
	b.ReportMetric(1, "needs-human")
}

const faultContainerEnv = `[environments.web]
driver = "container"
[environments.web.container]
name = "bench-fault"
ports = ["127.0.0.1:` + faultPort + `:5000"]
health_url = "http://127.0.0.1:` + faultPort + `/health"
health_timeout = "10s"
stop_timeout = "2s"
restart = "unless-stopped"
`

// the container environment with its ports on an anchor, or behind the proxy
const (
	faultAnchorEnv = faultContainerEnv + "ports_on = \"anchor\"\n"
	faultProxyEnv  = faultContainerEnv + "ports_on = \"proxy\"\n"
)

// containerFault deploys the container environment, then strikes it with
// fault once per iteration.
func containerFault(b *testing.B, envTOML, url string, fault func(b *testing.B, f *faultEnv) time.Time) {
	f := newFaultEnv(b, envTOML)
	defer clearPort(b, "bench-fault", "berth-lock-bench-fault", "berth-ledger-bench-fault", "bench-proxy")
	f.version(b, "v0")
	f.deploy(b, "master")
	for i := 0; i < b.N; i++ {
		f.version(b, fmt.Sprintf("v%d", i+1))
		since := fault(b, f)
		servesAgain(b, url, since)
	}
}

// BenchmarkFault: each fault once per iteration; the table reports the
// seconds until the environment serves again.
func BenchmarkFault(b *testing.B) {
	url := "http://127.0.0.1:" + faultPort + "/"
	rig := filepath.Join(here(), "..", ".ci", "rig.sh")
	containerIn := func(envTOML string) func(b *testing.B, fault func(b *testing.B, f *faultEnv) time.Time) {
		return func(b *testing.B, fault func(b *testing.B, f *faultEnv) time.Time) {
			containerFault(b, envTOML, url, fault)
		}
	}
	container, proxied := containerIn(faultAnchorEnv), containerIn(faultProxyEnv)
	signalAt := func(step string, sig syscall.Signal) func(b *testing.B, f *faultEnv) time.Time {
		return func(b *testing.B, f *faultEnv) time.Time {
			c, file := f.start(b, "master", step)
			pid := pausedPID(b, file)
			t := time.Now()
			must(b, syscall.Kill(pid, sig))
			_ = c.Wait()
			return t
		}
	}
	b.Run("sigterm-mid-switch/container", func(b *testing.B) { container(b, signalAt("deploy:rename-new", syscall.SIGTERM)) })
	b.Run("sigkill-mid-switch/container", func(b *testing.B) { container(b, signalAt("deploy:rename-new", syscall.SIGKILL)) })
	b.Run("registry-down-during-push/container", func(b *testing.B) {
		container(b, func(b *testing.B, f *faultEnv) time.Time {
			sh(b, rig+" registry-stop 2>/dev/null")
			defer sh(b, rig+" registry 2>/dev/null")
			t := time.Now()
			f.deploy(b, "master")
			return t
		})
	})
	restartAt := func(step string) func(b *testing.B, f *faultEnv) time.Time {
		return func(b *testing.B, f *faultEnv) time.Time {
			c, file := f.start(b, "master", step)
			pausedPID(b, file)
			t := time.Now()
			sh(b, rig+" engine-restart 2>/dev/null")
			must(b, os.Remove(file))
			_ = c.Wait()
			return t
		}
	}
	b.Run("engine-restart-mid-switch/container", func(b *testing.B) { container(b, restartAt("deploy:start-new")) })
	b.Run("sigterm-mid-switch/container-proxy", func(b *testing.B) { proxied(b, signalAt("deploy:stop-old-1", syscall.SIGTERM)) })
	b.Run("sigkill-mid-switch/container-proxy", func(b *testing.B) { proxied(b, signalAt("deploy:stop-old-1", syscall.SIGKILL)) })
	b.Run("engine-restart-mid-switch/container-proxy", func(b *testing.B) { proxied(b, restartAt("deploy:route-1")) })
	b.Run("sigkill-during-up/compose", func(b *testing.B) {
		helper := filepath.Join(filepath.Dir(os.Getenv("BERTH_BIN")), "berth-compose")
		if _, err := os.Stat(helper); err != nil {
			b.Skip("no berth-compose beside BERTH_BIN: run make bench")
		}
		f := newFaultEnv(b, "[environments.integration]\ndriver = \"compose\"\n[environments.integration.compose]\nproject = \"benchfault\"\nwait_timeout = \"30s\"\n")
		defer clearPort(b, "benchfault-", "berth-lock-compose-benchfault", "berth-ledger-compose-benchfault")
		f.git(b, "checkout", "-qb", "develop")
		compose := "services:\n  web:\n    image: 127.0.0.1:5000/berth-bench/bench/faults:develop\n    ports: [\"127.0.0.1:" + faultPort + ":5000\"]\n"
		f.commit(b, map[string]string{"compose.yaml": compose, "Dockerfile": "FROM web:local\nENV APP_VERSION=c0\n"})
		f.deploy(b, "develop")
		for i := 0; i < b.N; i++ {
			f.commit(b, map[string]string{"Dockerfile": fmt.Sprintf("FROM web:local\nENV APP_VERSION=c%d\n", i+1)})
			c, file := f.start(b, "develop", "deploy:up")
			pid := pausedPID(b, file)
			t := time.Now()
			must(b, syscall.Kill(pid, syscall.SIGKILL))
			_ = c.Wait()
			servesAgain(b, url, t)
		}
	})
}
