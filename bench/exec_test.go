package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkExecPipeline: a pipeline of 6 independent busybox jobs, with
// berth exec four at once and one at a time, and the same jobs one by one
// through the real gitlab-runner with berth as its executor.
func BenchmarkExecPipeline(b *testing.B) {
	e := setup(b)
	glr := os.Getenv("GLR_BIN")
	if glr == "" {
		b.Skip("GLR_BIN is not set: run make bench")
	}
	repo := filepath.Join(e.dir, "pipeline")
	must(b, os.MkdirAll(repo, 0o755))
	var yml strings.Builder
	yml.WriteString("image: busybox:local\n")
	for i := 1; i <= 6; i++ {
		fmt.Fprintf(&yml, "job%d:\n  script: [echo job %d, sleep 1]\n", i, i)
	}
	must(b, os.WriteFile(filepath.Join(repo, ".gitlab-ci.yml"), []byte(yml.String()), 0o644))
	git := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.com", "GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.com")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	git("init", "-q", "-b", "master")
	git("add", ".")
	git("commit", "-qm", "six jobs")
	berth := e.drivers[0]
	berthExec := func(jobs string) func(int) {
		return func(int) {
			cmd := exec.Command(berth.exe, append(append([]string{}, berth.args...), "exec", "--jobs", jobs)...)
			cmd.Dir = repo
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("berth exec: %v: %s", err, out)
			}
		}
	}
	b.Run("jobs4", func(b *testing.B) { timed(b, nil, berthExec("4"), nil) })
	b.Run("jobs1", func(b *testing.B) { timed(b, nil, berthExec("1"), nil) })
	b.Run("runner", func(b *testing.B) {
		timed(b, nil, func(int) {
			for i := 1; i <= 6; i++ {
				args := []string{"--repo", repo, "--ref", "master", "--stage", "test", "--name", fmt.Sprintf("job%d", i), "--image", "busybox:local",
					"--id", fmt.Sprint(newID()), "--script", fmt.Sprintf("echo job %d", i), "--script", "sleep 1"}
				payload, err := exec.Command(filepath.Join(e.shared, "job.py"), args...).Output()
				must(b, err)
				p := filepath.Join(e.dir, fmt.Sprintf("exec-%d.json", newID()))
				must(b, os.WriteFile(p, payload, 0o600))
				c := exec.Command(filepath.Join(e.shared, "run-job.sh"), append([]string{p, p + ".out", "--"}, append([]string{berth.exe}, berth.args...)...)...)
				c.Env = append(os.Environ(), "GLR_BIN="+glr)
				if o, err := c.CombinedOutput(); err != nil || !strings.Contains(string(o), "state=success") {
					b.Fatalf("job %d through the runner: %v: %s", i, err, o)
				}
			}
		}, nil)
	})
}
