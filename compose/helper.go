package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/berthci/berth/executor"
)

// HelperName is the binary that runs docker compose for berth.
const HelperName = "berth-compose"

// Helper runs berth-compose: the request on stdin, the result on stdout.
type Helper struct {
	Path string
}

// FindHelper looks for berth-compose next to berth's own binary, then on
// PATH.
func FindHelper() (Helper, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), HelperName)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return Helper{Path: p}, nil
		}
	}
	p, err := exec.LookPath(HelperName)
	if err != nil {
		return Helper{}, executor.Systemf("compose environments need %s next to berth or on PATH (make build installs both): %w", HelperName, err)
	}
	return Helper{Path: p}, nil
}

// Apply runs the helper once.
func (h Helper) Apply(ctx context.Context, req Request) (Result, error) {
	in, err := json.Marshal(req)
	if err != nil {
		return Result{}, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, h.Path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &stdout, &stderr
	cmd.Env = helperEnv(os.Environ())
	runErr := cmd.Run()
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return Result{}, executor.Systemf("%s failed: %v: %s", HelperName, runErr, strings.TrimSpace(stderr.String()))
	}
	if runErr != nil && res.Error == "" {
		return Result{}, executor.Systemf("%s failed: %v: %s", HelperName, runErr, strings.TrimSpace(stderr.String()))
	}
	return res, nil
}

// Err is a Result's error with its class, or nil.
func (r Result) Err() error {
	if r.Error == "" {
		return nil
	}
	if r.Class == "build" {
		return executor.Buildf("%s", r.Error)
	}
	return executor.Systemf("%s", r.Error)
}

// helperEnv is what berth-compose gets of berth's environment: what reaching
// an engine needs, never the runner's CUSTOM_ENV_* job variables, which hold
// the job token and masked variables and which interpolation would otherwise
// carry into the project.
func helperEnv(environ []string) []string {
	keep := map[string]bool{"PATH": true, "HOME": true, "USER": true, "TMPDIR": true, "SSH_AUTH_SOCK": true,
		"DOCKER_HOST": true, "DOCKER_CONFIG": true, "DOCKER_CERT_PATH": true, "DOCKER_TLS_VERIFY": true, "DOCKER_API_VERSION": true}
	var out []string
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); keep[k] {
			out = append(out, kv)
		}
	}
	return out
}
