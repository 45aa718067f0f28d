package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const defaultTOML = "[job]\ndefault_image = \"busybox:local\"\nhelper_image = \"berth-helper:local\"\n"

// Each test runs one job through the real runner and checks the engine is
// left clean afterwards.
func TestE2E(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	toml := writeTOML(t, defaultTOML)

	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, res jobResult)
	}{
		{
			name: "a job succeeds",
			args: []string{"--ref", "master", "--stage", "test", "--image", "busybox:local", "--script", "echo hello from $CI_JOB_STAGE; pwd"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "success", res.State)
				tr := traceLines(res.Trace)
				assert.Contains(t, tr, "hello from test")
				assert.Regexp(t, `berth \S+ · job \d+ · ref master \(branch\) · stage test · image busybox:local`, tr, "one header line")
			},
		},
		{
			name: "exit 42 is a script failure with its exit code",
			args: []string{"--ref", "master", "--stage", "test", "--image", "busybox:local", "--script", "echo failing; exit 42"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "failed", res.State)
				assert.Equal(t, "script_failure", res.FailureReason)
				assert.Equal(t, 42, res.ExitCode)
			},
		},
		{
			name: "after_script sees CI_JOB_STATUS",
			args: []string{"--ref", "master", "--stage", "test", "--image", "busybox:local", "--script", "exit 3", "--after-script", "echo status=$CI_JOB_STATUS"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "failed", res.State)
				assert.Contains(t, res.Trace, "status=failed")
			},
		},
		{
			name: "a service is reachable by its alias",
			args: []string{"--ref", "master", "--stage", "test", "--image", "busybox:local", "--service", "web:local=app",
				"--script", "wget -qO- http://app:5000/health && wget -qO- http://web:5000/"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "success", res.State, res.Trace)
				assert.Contains(t, traceLines(res.Trace), "\nok\n")
				assert.Contains(t, traceLines(res.Trace), "app dev")
			},
		},
		{
			name: "an image without bash runs the script with sh",
			args: []string{"--ref", "master", "--stage", "style", "--image", "busybox:local", "--script", `echo "bash=[${BASH_VERSION:-}]"; test ! -e /bin/bash`},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "success", res.State, res.Trace)
				assert.Contains(t, res.Trace, "bash=[]")
			},
		},
		{
			name: "an image with bash runs the script with bash",
			args: []string{"--ref", "master", "--stage", "test", "--image", "bash:local", "--script", `echo "bash=[$BASH_VERSION]"`},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "success", res.State, res.Trace)
				assert.Regexp(t, `bash=\[5\.`, res.Trace)
			},
		},
		{
			name: "a job without image uses the TOML default",
			args: []string{"--ref", "feature/x", "--stage", "test", "--script", "cat README"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "success", res.State, res.Trace)
				assert.Contains(t, res.Trace, "image busybox:local")
				assert.Contains(t, traceLines(res.Trace), "\napp\n", "the checked-out sources are in the container")
			},
		},
		{
			name: "a cancelled script (SIGTERM) still gets after_script and cleanup",
			args: []string{"--ref", "master", "--stage", "test", "--image", "busybox:local", "--var", "RUNNER_SCRIPT_TIMEOUT=3s",
				"--script", `trap "echo got TERM; exit 143" TERM; echo started; sleep 120 & wait; echo not reached`,
				"--after-script", "echo after=$CI_JOB_STATUS"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "failed", res.State)
				tr := traceLines(res.Trace)
				assert.Contains(t, tr, "\ngot TERM")
				assert.NotContains(t, tr, "\nnot reached")
				assert.Contains(t, tr, "after=")
				assert.Less(t, strings.Index(tr, "got TERM"), strings.Index(tr, "after="))
			},
		},
		{
			name: "a masked secret never reaches the trace or the runner log",
			args: []string{"--ref", "master", "--stage", "test", "--image", "busybox:local", "--masked", "DEPLOY_PW=hunter2-very-secret",
				"--service", "web:local", "--script", `echo "pw is $DEPLOY_PW"; env | grep DEPLOY_PW; exit 1`},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "failed", res.State)
				assert.Contains(t, res.Trace, "pw is [MASKED]")
				assert.NotContains(t, res.Trace, "hunter2-very-secret")
				assert.NotContains(t, res.RunnerLog(t), "hunter2-very-secret")
			},
		},
		{
			name: "a missing image fails with a clear message",
			args: []string{"--ref", "master", "--stage", "test", "--image", "127.0.0.1:5000/no/such-image:v1", "--script", "true"},
			check: func(t *testing.T, res jobResult) {
				assert.Equal(t, "failed", res.State)
				assert.Equal(t, "script_failure", res.FailureReason, "a missing image is the job's fault, not retried")
				assert.Contains(t, res.Trace, "image 127.0.0.1:5000/no/such-image:v1 not found")
				assert.Contains(t, res.Trace, "check the image name and tag in .gitlab-ci.yml")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--repo", repo}, tt.args...)
			res := r.runJob(t, toml, args...)
			tt.check(t, res)
			r.requireNothingLeft(t, res.JobID)
		})
	}
}

func TestE2EMalformedTOML(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	bad := filepath.Join(t.TempDir(), "berth.toml")
	require.NoError(t, os.WriteFile(bad, []byte("log_level = \"info\"\n[job]\npull_policy = always\n"), 0o644))

	res := r.runJob(t, bad, "--repo", repo, "--ref", "master", "--stage", "test", "--image", "busybox:local", "--script", "true")
	assert.Equal(t, "failed", res.State)
	assert.Equal(t, "runner_system_failure", res.FailureReason)
	assert.Contains(t, res.Trace, bad+":3:")
	r.requireNothingLeft(t, res.JobID)

	// the exact code is the runner's SYSTEM_FAILURE_EXIT_CODE
	cmd := exec.Command(r.berth, "--config", bad, "config")
	cmd.Env = append(os.Environ(), "SYSTEM_FAILURE_EXIT_CODE=77", "BUILD_FAILURE_EXIT_CODE=66")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 77, ee.ExitCode())
	assert.Contains(t, string(out), bad+":3:")

	unknown := filepath.Join(t.TempDir(), "berth.toml")
	require.NoError(t, os.WriteFile(unknown, []byte("[job]\n\ndefault_imag = \"x\"\n"), 0o644))
	out, err = exec.Command(r.berth, "--config", unknown, "check").CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), unknown+`:3: unknown key "job.default_imag"`)
}

func TestE2EServiceEntrypointCommandVariables(t *testing.T) {
	r := needRig(t)
	repo := gitRepo(t)
	toml := writeTOML(t, defaultTOML)
	edit := func(p map[string]any) {
		p["services"] = []any{map[string]any{
			"name": "busybox:local", "alias": "greeter",
			"entrypoint": []string{"sh", "-c"},
			"command":    []string{`mkdir -p /www && echo "$GREETING from the service" > /www/index.html && exec httpd -f -p 8080 -h /www`},
			"variables":  []any{map[string]any{"key": "GREETING", "value": "hello"}},
		}}
	}
	// busybox exposes no port, so prepare cannot wait for it: the job retries
	script := `for i in $(seq 50); do wget -qO- http://greeter:8080/ && exit 0; sleep 0.2; done; exit 1`
	res := r.runJobWith(t, toml, edit, "--repo", repo, "--ref", "master", "--stage", "test", "--image", "busybox:local", "--script", script)
	assert.Equal(t, "success", res.State, res.Trace)
	assert.Contains(t, traceLines(res.Trace), "\nhello from the service\n")
	r.requireNothingLeft(t, res.JobID)
}
