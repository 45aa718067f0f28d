package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/stop"
)

// Drivers that link a heavy library (docker compose, client-go) run it in a
// helper binary beside berth, so that only their deploys pay its start-up.

// FindHelper looks for a helper binary next to berth's own, then on PATH.
func FindHelper(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", failure.Systemf("%s is needed next to berth or on PATH (make build builds it): %w", name, err)
	}
	return p, nil
}

// RunHelper runs a helper once: req as JSON on stdin, its answer as JSON on
// stdout into res, and its stderr (job-log lines) copied to log as they
// come. A cancelled job: the helper gets SIGTERM and time to put the
// previous version back, as berth itself does, KILL after grace.
func RunHelper(ctx context.Context, path string, req, res any, log io.Writer, grace time.Duration) error {
	in, err := json.Marshal(req)
	if err != nil {
		return err
	}
	var stdout bytes.Buffer
	cmd := exec.Command(path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &stdout, log
	cmd.Env = HelperEnv(os.Environ())
	if err := cmd.Start(); err != nil {
		return failure.Systemf("start %s: %w", filepath.Base(path), err)
	}
	done := make(chan struct{})
	var runErr error
	go func() { runErr = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		stop.Gracefully(done, grace,
			func() { _ = cmd.Process.Signal(syscall.SIGTERM) },
			func() { _ = cmd.Process.Kill() })
		<-done
	}
	if err := json.Unmarshal(stdout.Bytes(), res); err != nil {
		return failure.Systemf("%s failed (%v) without an answer: see the lines above", filepath.Base(path), runErr)
	}
	return nil
}

// Answer is the error part of every helper's answer: why it failed and
// whose fault that is; empty on success.
type Answer struct {
	Error string `json:"error,omitempty"`
	Class string `json:"class,omitempty"`
}

// Classes of an Answer's error.
const (
	// ClassBuild is the job's fault.
	ClassBuild = "build"
	// ClassInvalid is the job's fault too, and nothing on the target
	// changed (a compose file that does not load or is refused).
	ClassInvalid = "invalid"
	// ClassSystem is the host's fault.
	ClassSystem = "system"
)

// AnswerOf is the answer a helper gives for err.
func AnswerOf(err error) Answer {
	switch {
	case err == nil:
		return Answer{}
	case failure.ClassOf(err) == failure.BuildFailure:
		return Answer{Error: err.Error(), Class: ClassBuild}
	default:
		return Answer{Error: err.Error(), Class: ClassSystem}
	}
}

// Err is the answer's error with its class, or nil.
func (a Answer) Err() error {
	switch {
	case a.Error == "":
		return nil
	case a.Class == ClassBuild || a.Class == ClassInvalid:
		return failure.Buildf("%s", a.Error)
	default:
		return failure.Systemf("%s", a.Error)
	}
}

// Reply writes a helper's answer on stdout: what berth reads back.
func Reply(w io.Writer, res any) error { return json.NewEncoder(w).Encode(res) }

// HelperEnv is what a helper gets of berth's environment: what reaching an
// engine or a cluster needs, never the runner's CUSTOM_ENV_* job variables,
// which hold the job token and masked variables.
func HelperEnv(environ []string) []string {
	keep := map[string]bool{"PATH": true, "HOME": true, "USER": true, "TMPDIR": true, "SSH_AUTH_SOCK": true,
		"DOCKER_HOST": true, "DOCKER_CONFIG": true, "DOCKER_CERT_PATH": true, "DOCKER_TLS_VERIFY": true, "DOCKER_API_VERSION": true,
		"KUBECONFIG": true, "KUBERNETES_SERVICE_HOST": true, "KUBERNETES_SERVICE_PORT": true,
		PauseAtEnv: true, PauseFileEnv: true}
	var out []string
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); keep[k] {
			out = append(out, kv)
		}
	}
	return out
}
