// Package bench measures berth side by side with the shell-script way (the
// bash side in bashdriver.sh) on the same engine, in one run. bench/run.sh
// turns the output into docs/BENCHMARKS.md.
//
// The rig must be up (.ci/rig.sh up) and BERTH_BIN must name a built berth
// (make bench does both).
package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// side is one side of a comparison: an executable plus the arguments the
// runner would pass before the protocol command.
type side struct {
	name string
	exe  string
	args []string
}

type env struct {
	dir     string
	shared  string // ../shared/gitlab-runner
	repo    string
	drivers []side
}

func here() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func setup(b *testing.B) *env {
	b.Helper()
	berth := os.Getenv("BERTH_BIN")
	if berth == "" {
		b.Skip("BERTH_BIN is not set: run make bench")
	}
	shared := os.Getenv("BERTH_SHARED")
	if shared == "" {
		shared = filepath.Join(here(), "..", "..", "shared")
	}
	e := &env{dir: b.TempDir(), shared: filepath.Join(shared, "gitlab-runner")}
	toml := filepath.Join(e.dir, "berth.toml")
	body := fmt.Sprintf("builds_dir = %q\ncache_dir = %q\n[job]\ndefault_image = \"busybox:local\"\nhelper_image = \"berth-helper:local\"\n", filepath.Join(e.dir, "builds"), filepath.Join(e.dir, "cache"))
	must(b, os.WriteFile(toml, []byte(body), 0o644))
	e.drivers = []side{
		{name: "berth", exe: berth, args: []string{"--config", toml}},
		{name: "bash", exe: filepath.Join(here(), "bashdriver.sh")},
	}
	// berth before the helper container (bench/run.sh builds it): its host
	// stages ran with the runner host's bash, and it knows no helper_image
	if before := os.Getenv("BERTH_BEFORE_BIN"); before != "" {
		old := filepath.Join(e.dir, "before.toml")
		must(b, os.WriteFile(old, []byte(strings.Replace(body, "helper_image = \"berth-helper:local\"\n", "", 1)), 0o644))
		e.drivers = append(e.drivers, side{name: "before", exe: before, args: []string{"--config", old}})
	}
	e.repo = filepath.Join(e.dir, "repo")
	for _, args := range [][]string{{"init", "-q", "-b", "master", e.repo}, {"-C", e.repo, "commit", "-q", "--allow-empty", "-m", "x"}} {
		cmd := exec.Command("git", args...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.com", "GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.com")
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	return e
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// payload renders a trivial test job and returns its path and id.
func (e *env) payload(b *testing.B, id int) string {
	out, err := exec.Command(filepath.Join(e.shared, "job.py"), "--repo", e.repo, "--ref", "master", "--stage", "test",
		"--image", "busybox:local", "--script", "echo ok", "--id", fmt.Sprint(id)).Output()
	must(b, err)
	p := filepath.Join(e.dir, fmt.Sprintf("job-%d.json", id))
	must(b, os.WriteFile(p, out, 0o600))
	return p
}

// call runs one protocol command the way the runner does.
func (e *env) call(b *testing.B, d side, payload string, id int, cmd ...string) {
	c := exec.Command(d.exe, append(append([]string{}, d.args...), cmd...)...)
	c.Env = append(os.Environ(), "JOB_RESPONSE_FILE="+payload, fmt.Sprintf("CUSTOM_ENV_CI_JOB_ID=%d", id),
		"CUSTOM_ENV_CI_JOB_IMAGE=busybox:local", "BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2",
		"BUILD_EXIT_CODE_FILE="+filepath.Join(e.dir, "exit-code"), "BASHDRIVER_BUILDS="+filepath.Join(e.dir, "bash"))
	if out, err := c.CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v: %s", d.name, cmd, err, out)
	}
}

// timed runs f b.N times and reports the median, which a single slow engine
// call cannot drag like the mean.
func timed(b *testing.B, setup, f, teardown func(i int)) {
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if setup != nil {
			setup(i)
		}
		t := time.Now()
		b.StartTimer()
		f(i)
		b.StopTimer()
		samples = append(samples, time.Since(t))
		if teardown != nil {
			teardown(i)
		}
	}
	sort.Slice(samples, func(i, k int) bool { return samples[i] < samples[k] })
	b.ReportMetric(float64(samples[len(samples)/2])/1e6, "median-ms")
}

var nextID = int(time.Now().Unix()%1e6) * 100

func newID() int { nextID++; return nextID }

// BenchmarkInvocation times each protocol call alone: config, prepare, an
// empty run stage in the job container, and cleanup.
func BenchmarkInvocation(b *testing.B) {
	e := setup(b)
	empty := filepath.Join(e.dir, "empty.sh")
	must(b, os.WriteFile(empty, []byte(":\n"), 0o755))
	for _, d := range e.drivers {
		d := d
		b.Run("config/"+d.name, func(b *testing.B) {
			id := newID()
			p := e.payload(b, id)
			timed(b, nil, func(int) { e.call(b, d, p, id, "config") }, nil)
		})
		b.Run("prepare/"+d.name, func(b *testing.B) {
			ids := map[int]int{}
			payloads := map[int]string{}
			timed(b, func(i int) { ids[i] = newID(); payloads[i] = e.payload(b, ids[i]) },
				func(i int) { e.call(b, d, payloads[i], ids[i], "prepare") },
				func(i int) { e.call(b, d, payloads[i], ids[i], "cleanup") })
		})
		b.Run("run-empty/"+d.name, func(b *testing.B) {
			id := newID()
			p := e.payload(b, id)
			e.call(b, d, p, id, "prepare")
			defer e.call(b, d, p, id, "cleanup")
			timed(b, nil, func(int) { e.call(b, d, p, id, "run", empty, "build_script") }, nil)
		})
		b.Run("cleanup/"+d.name, func(b *testing.B) {
			ids := map[int]int{}
			payloads := map[int]string{}
			timed(b, func(i int) {
				ids[i] = newID()
				payloads[i] = e.payload(b, ids[i])
				e.call(b, d, payloads[i], ids[i], "prepare")
			}, func(i int) { e.call(b, d, payloads[i], ids[i], "cleanup") }, nil)
		})
	}
}

// BenchmarkTrivialJob times a whole `echo ok` test job through the real
// gitlab-runner, from job request to final state.
func BenchmarkTrivialJob(b *testing.B) {
	e := setup(b)
	glr := os.Getenv("GLR_BIN")
	if glr == "" {
		b.Skip("GLR_BIN is not set: run make bench")
	}
	for _, d := range e.drivers {
		d := d
		b.Run(d.name, func(b *testing.B) {
			timed(b, nil, func(int) {
				id := newID()
				p := e.payload(b, id)
				out := filepath.Join(e.dir, fmt.Sprintf("out-%d", id))
				args := append([]string{p, out, "--", d.exe}, d.args...)
				c := exec.Command(filepath.Join(e.shared, "run-job.sh"), args...)
				c.Env = append(os.Environ(), "GLR_BIN="+glr, "BASHDRIVER_BUILDS="+filepath.Join(e.dir, "bash"))
				if o, err := c.CombinedOutput(); err != nil {
					b.Fatalf("run-job.sh: %v: %s", err, o)
				}
				var res struct{ State string }
				data, err := os.ReadFile(filepath.Join(out, "result.json"))
				must(b, err)
				must(b, json.Unmarshal(data, &res))
				if res.State != "success" {
					b.Fatalf("%s: job %s", d.name, res.State)
				}
			}, nil)
		})
	}
}

// BenchmarkComposeHelper is what a compose deploy pays on top: starting
// berth-compose (docker compose linked in) and loading a one-service
// project; the request names a service the project lacks, so it stops
// there. berth's own invocations do not link compose, so they do not pay it.
func BenchmarkComposeHelper(b *testing.B) {
	berth := os.Getenv("BERTH_BIN")
	if berth == "" {
		b.Skip("BERTH_BIN is not set: run make bench")
	}
	helper := filepath.Join(filepath.Dir(berth), "berth-compose")
	dir := b.TempDir()
	must(b, os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services:\n  web:\n    image: web:local\n"), 0o644))
	req := fmt.Sprintf(`{"project":"benchload","working_dir":%q,"image":"web:local","services":["nosuch"]}`, dir)
	b.Run("load/berth", func(b *testing.B) {
		timed(b, nil, func(int) {
			c := exec.Command(helper)
			c.Stdin = strings.NewReader(req)
			out, err := c.Output()
			if err != nil || !strings.Contains(string(out), `has no service \"nosuch\"`) {
				b.Fatalf("berth-compose: %v: %s", err, out)
			}
		}, nil)
	})
}
