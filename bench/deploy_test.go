package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/stages/containers"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/client"

	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages"
)

// The deploy benchmarks of issue 3, each side by side with the shell lines
// teams write today, on the same engine, registry and port 127.0.0.1:6000.

const (
	benchPort = "6000"
	benchURL  = "http://127.0.0.1:" + benchPort + "/"
	benchRepo = "127.0.0.1:5000/berth-bench/app"
)

func sh(b *testing.B, script string) string {
	b.Helper()
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v: %s", script, err, out)
	}
	return strings.TrimSpace(string(out))
}

// docker is Debian's CLI: it speaks the engine's API and builds with BuildKit.
const docker = "/usr/bin/docker"

func engine(b *testing.B) *client.Client {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	must(b, err)
	return c
}

// versions builds and pushes n versions of the app; it returns their refs.
func versions(b *testing.B, n int) []string {
	b.Helper()
	dir := b.TempDir()
	var refs []string
	for i := 0; i < n; i++ {
		must(b, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(fmt.Sprintf("FROM web:local\nENV APP_VERSION=v%d\n", i)), 0o644))
		ref := fmt.Sprintf("%s:v%d", benchRepo, i)
		sh(b, fmt.Sprintf("%s build -q -t %s %s >/dev/null && %s push %s >/dev/null", docker, ref, dir, docker, ref))
		digest := sh(b, fmt.Sprintf("%s inspect -f '{{index .RepoDigests 0}}' %s", docker, ref))
		refs = append(refs, digest)
	}
	return refs
}

func clearPort(b *testing.B, names ...string) {
	for _, n := range names {
		_ = exec.Command("bash", "-c", fmt.Sprintf("%s ps -aq --filter name=^/%s | xargs -r %s rm -f", docker, n, docker)).Run()
	}
}

func waitServing(b *testing.B, want string) {
	b.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(benchURL); err == nil {
			var buf [64]byte
			n, _ := resp.Body.Read(buf[:])
			resp.Body.Close()
			if strings.Contains(string(buf[:n]), want) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.Fatalf("%s never served %q", benchURL, want)
}

// webDriver is the master flow's driver as berth wires it, its anchor made
// of BERTH_BIN.
func webDriver(b *testing.B, c *client.Client, name string) *containers.Driver {
	bin := os.Getenv("BERTH_BIN")
	if bin == "" {
		b.Skip("BERTH_BIN is not set: run make bench")
	}
	return &containers.Driver{Env: "web", Engine: c, Creds: &target.Credentials{}, Out: nopWriter{}, AnchorBinary: bin, Spec: settings.ContainerSpec{
		Name: name, Ports: []string{"127.0.0.1:" + benchPort + ":5000"}, HealthURL: benchURL + "health",
		HealthTimeout: settings.Duration(20 * time.Second), StopTimeout: settings.Duration(10 * time.Second), Keep: 2,
		PortsOn: settings.PortsOnAnchor,
	}}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

func release(ref string) driver.Release {
	digest := ref[strings.Index(ref, "@")+1:]
	return driver.Release{Env: "web", Image: ref, Digest: digest, Tag: "latest", Ref: "master", Pipeline: 1, Job: time.Now().UnixNano() % 1e6, By: "bench"}
}

// prober counts failed requests and the longest gap between two answered
// ones on the port, every 2 ms, until stopped and answered again; bounded
// by a minute.
type prober struct {
	mu       sync.Mutex
	failed   int
	longest  time.Duration
	stop     chan struct{}
	finished chan struct{}
}

func probe() *prober {
	p := &prober{stop: make(chan struct{}), finished: make(chan struct{})}
	c := &http.Client{Timeout: 200 * time.Millisecond}
	go func() {
		defer close(p.finished)
		last := time.Now()
		answered := true
		for end := time.Now().Add(time.Minute); time.Now().Before(end); {
			select {
			case <-p.stop:
				if answered { // the gap in progress counts too
					return
				}
			default:
			}
			resp, err := c.Get(benchURL)
			now := time.Now()
			p.mu.Lock()
			answered = err == nil && resp.StatusCode == 200
			if !answered {
				p.failed++
			} else {
				if gap := now.Sub(last); gap > p.longest {
					p.longest = gap
				}
				last = now
			}
			p.mu.Unlock()
			if resp != nil {
				resp.Body.Close()
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return p
}

func (p *prober) end() (int, time.Duration) {
	close(p.stop)
	<-p.finished
	return p.failed, p.longest
}

func medianOf(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

// BenchmarkOutage is (b): one replacement under a 2 ms prober.
func BenchmarkOutage(b *testing.B) {
	c := engine(b)
	refs := versions(b, 2)
	ctx := context.Background()
	b.Run("berth", func(b *testing.B) {
		d := webDriver(b, c, "bench-web")
		defer clearPort(b, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		probedSwitches(b, func(ref string) { must(b, d.Deploy(ctx, release(ref))) }, refs)
	})
	b.Run("bash", func(b *testing.B) {
		defer clearPort(b, "bench-web-sh")
		run := func(ref string) {
			sh(b, fmt.Sprintf("if [ \"$(%[1]s ps -aq --filter name=bench-web-sh)\" ]; then %[1]s rm -f bench-web-sh >/dev/null; fi; %[1]s run -d -p 127.0.0.1:%[2]s:5000 --name bench-web-sh %[3]s >/dev/null", docker, benchPort, ref))
		}
		run(refs[0])
		waitServing(b, "app v0")
		probedSwitches(b, run, refs)
	})
}

// probedSwitches switches between the two versions b.N times under the
// prober and reports the median failed requests and longest gap.
func probedSwitches(b *testing.B, switchTo func(ref string), refs []string) {
	var failed, gaps []float64
	for i := 0; i < b.N; i++ {
		p := probe()
		switchTo(refs[(i+1)%2])
		waitServing(b, fmt.Sprintf("app v%d", (i+1)%2))
		f, g := p.end()
		failed, gaps = append(failed, float64(f)), append(gaps, float64(g.Milliseconds()))
	}
	b.ReportMetric(medianOf(failed), "failed")
	b.ReportMetric(medianOf(gaps), "longest-gap-ms")
}

// BenchmarkRollback is (d): back to the previous version until it answers.
func BenchmarkRollback(b *testing.B) {
	c := engine(b)
	refs := versions(b, 2)
	ctx := context.Background()
	b.Run("berth", func(b *testing.B) {
		d := webDriver(b, c, "bench-web")
		defer clearPort(b, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		must(b, d.Deploy(ctx, release(refs[1])))
		timed(b, nil, func(i int) {
			_, err := d.Rollback(ctx, "", "bench")
			must(b, err)
			waitServing(b, fmt.Sprintf("app v%d", i%2)) // rolling back twice returns to where it was
		}, nil)
	})
	b.Run("bash", func(b *testing.B) {
		defer clearPort(b, "bench-web-sh")
		run := func(ref string) {
			sh(b, fmt.Sprintf("%[1]s rm -f bench-web-sh >/dev/null 2>&1; %[1]s run -d -p 127.0.0.1:%[2]s:5000 --name bench-web-sh %[3]s >/dev/null", docker, benchPort, ref))
		}
		run(refs[1])
		timed(b, nil, func(i int) {
			run(refs[i%2])
			waitServing(b, fmt.Sprintf("app v%d", i%2))
		}, nil)
	})
}

// BenchmarkRelease is (c): the tag from the tested image, by promotion or
// by rebuild and push.
func BenchmarkRelease(b *testing.B) {
	dir := b.TempDir()
	must(b, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM web:local\nCOPY release.txt /release.txt\nENV APP_VERSION=rc\n"), 0o644))
	must(b, os.WriteFile(filepath.Join(dir, "release.txt"), []byte(fmt.Sprint(time.Now().UnixNano())), 0o644))
	tested := benchRepo + ":release-1.0.0"
	sh(b, fmt.Sprintf("%s build -q -t %s %s >/dev/null && %s push %s >/dev/null", docker, tested, dir, docker, tested))
	testedDigest := sh(b, fmt.Sprintf("%s inspect -f '{{index .RepoDigests 0}}' %s", docker, tested))
	testedDigest = testedDigest[strings.Index(testedDigest, "@")+1:]
	ctx := context.Background()
	b.Run("berth", func(b *testing.B) {
		reg := &stages.Registry{Creds: &target.Credentials{}, Out: nopWriter{}, Retries: 0, Sleep: time.Sleep}
		same := 1.0
		timed(b, nil, func(i int) {
			got, err := reg.Tag(ctx, tested, fmt.Sprintf("%s:v1.0.%d", benchRepo, i))
			must(b, err)
			if got != testedDigest {
				same = 0
			}
		}, nil)
		b.ReportMetric(same, "same-digest")
	})
	b.Run("bash", func(b *testing.B) {
		same := 1.0
		timed(b, func(i int) {
			sh(b, fmt.Sprintf("%s builder prune -af >/dev/null 2>&1 || true", docker)) // a release pipeline builds on a clean runner
		}, func(i int) {
			tag := fmt.Sprintf("%s:v1.0.%d-sh", benchRepo, i)
			sh(b, fmt.Sprintf("%s build -q -t %s %s >/dev/null && %s push %s >/dev/null", docker, tag, dir, docker, tag))
			got := sh(b, fmt.Sprintf("%s inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' %s | grep -F %s | head -1", docker, tag, tag[:strings.LastIndex(tag, ":")]))
			if !strings.HasSuffix(got, testedDigest) {
				same = 0
			}
		}, nil)
		b.ReportMetric(same, "same-digest")
	})
}

// BenchmarkDeployJob is (a): a master deploy job through the real runner.
func BenchmarkDeployJob(b *testing.B) {
	e := setup(b)
	glr := os.Getenv("GLR_BIN")
	if glr == "" {
		b.Skip("GLR_BIN is not set: run make bench")
	}
	repo := filepath.Join(e.dir, "app")
	gitIn := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.com", "GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.com")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	must(b, os.MkdirAll(repo, 0o755))
	gitIn("init", "-q", "-b", "master")
	commit := func(v string) {
		must(b, os.WriteFile(filepath.Join(repo, "Dockerfile"), []byte("FROM web:local\nENV APP_VERSION="+v+"\n"), 0o644))
		gitIn("add", ".")
		gitIn("commit", "-qm", v)
	}
	toml := filepath.Join(e.dir, "deploy.toml")
	must(b, os.WriteFile(toml, []byte(fmt.Sprintf(`builds_dir = %q
cache_dir = %q
[job]
default_image = "busybox:local"
helper_image = "berth-helper:local"
[registry]
image = %q
[environments.web]
driver = "container"
[environments.web.container]
name = "bench-web"
ports = ["127.0.0.1:%s:5000"]
health_url = "%shealth"
[proxy]
image = "caddy:local"
name = "bench-proxy"
network = "bench-proxy"
`, filepath.Join(e.dir, "builds"), filepath.Join(e.dir, "cache"), benchRepo, benchPort, benchURL)), 0o644))
	// berth with the anchor, as before the proxy became the default
	data, err := os.ReadFile(toml)
	must(b, err)
	must(b, os.WriteFile(toml+".anchor", []byte(strings.Replace(string(data), "[proxy]", "ports_on = \"anchor\"\n[proxy]", 1)), 0o644))
	script := []string{
		"$D build -t " + benchRepo + "-sh .",
		"$D push " + benchRepo + "-sh",
		"if [ $($D ps -aq --filter name=bench-web-sh) ]; then $D rm -f bench-web-sh; fi",
		"$D run -d -p 127.0.0.1:" + benchPort + ":5000 --name bench-web-sh " + benchRepo + "-sh",
	}
	sides := []struct {
		name string
		args []string
		env  []string
		jobs []string
	}{
		{"berth", []string{e.drivers[0].exe, "--config", toml}, nil, nil},
		{"anchor", []string{e.drivers[0].exe, "--config", toml + ".anchor"}, nil, nil},
		{"bash", []string{e.drivers[1].exe}, []string{"BASHDRIVER_ON_HOST=1"}, script},
	}
	if len(e.drivers) > 2 { // berth before the helper container, on a container of its own
		old := strings.NewReplacer("helper_image = \"berth-helper:local\"\n", "", `name = "bench-web"`, `name = "bench-web-before"`).Replace(string(data))
		old = old[:strings.Index(old, "[proxy]")] // it knows no proxy: the anchor was its default
		must(b, os.WriteFile(toml+".before", []byte(old), 0o644))
		sides = append(sides, struct {
			name string
			args []string
			env  []string
			jobs []string
		}{"before", []string{e.drivers[2].exe, "--config", toml + ".before"}, nil, nil})
	}
	for _, side := range sides {
		b.Run(side.name, func(b *testing.B) {
			defer clearPort(b, "bench-web", "bench-proxy")
			var outside []float64 // ms of the job besides its deploy step
			defer func() {
				if len(outside) > 0 && side.name != "bash" {
					b.ReportMetric(medianOf(outside), "outside-step-ms")
				}
			}()
			timed(b, func(int) { commit(fmt.Sprintf("%s-%d", side.name, newID())) }, func(int) {
				t := time.Now()
				args := []string{"--repo", repo, "--ref", "master", "--stage", "deploy", "--image", "busybox:local", "--id", fmt.Sprint(newID()),
					"--var", "D=" + docker, "--var", "DOCKER_BUILDKIT=1"}
				for _, l := range side.jobs {
					args = append(args, "--script", l)
				}
				payload, err := exec.Command(filepath.Join(e.shared, "job.py"), args...).Output()
				must(b, err)
				p := filepath.Join(e.dir, fmt.Sprintf("deploy-%d.json", newID()))
				must(b, os.WriteFile(p, payload, 0o600))
				out := p + ".out"
				c := exec.Command(filepath.Join(e.shared, "run-job.sh"), append([]string{p, out, "--"}, side.args...)...)
				c.Env = append(append(os.Environ(), "GLR_BIN="+glr, "BASHDRIVER_BUILDS="+filepath.Join(e.dir, "bash")), side.env...)
				if o, err := c.CombinedOutput(); err != nil || !strings.Contains(string(o), "state=success") {
					b.Fatalf("%s deploy job: %v: %s (see %s)", side.name, err, o, out)
				}
				total := time.Since(t)
				if step, ok := stepScriptTime(b, out); ok {
					outside = append(outside, float64(total-step)/1e6)
				}
			}, nil)
		})
	}
}

// stepScriptTime is how long the job's step_script section took, from the
// timestamps the runner puts on the trace's section lines.
func stepScriptTime(b *testing.B, out string) (time.Duration, bool) {
	data, err := os.ReadFile(filepath.Join(out, "result.json"))
	must(b, err)
	var res struct{ Trace string }
	must(b, json.Unmarshal(data, &res))
	var start, end time.Time
	for _, l := range strings.Split(res.Trace, "\n") {
		stamp, rest, _ := strings.Cut(l, " ")
		ts, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil || !strings.HasSuffix(strings.TrimRight(rest, "\x1b[0K\r"), ":step_script") {
			continue
		}
		switch {
		case strings.Contains(rest, "section_start:"):
			start = ts
		case strings.Contains(rest, "section_end:"):
			end = ts
		}
	}
	return end.Sub(start), !start.IsZero() && end.After(start)
}
