package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers"
)

func TestTOMLRegistryHost(t *testing.T) {
	for img, host := range map[string]string{
		"127.0.0.1:5000/group/app":   "127.0.0.1:5000",
		"registry.example.com/g/app": "registry.example.com",
		"group/app":                  "docker.io",
		"":                           "",
	} {
		s := settings.Defaults()
		s.Registry.Image = img
		a := &app{settings: &s}
		assert.Equal(t, host, a.credentials().TOMLHost, img)
	}
}

// berth is started several times per job: the libraries that only the
// helpers need (docker compose, client-go) must stay out of it.
func TestBerthLinksNeitherComposeNorClientGo(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	require.NoError(t, err)
	for _, dep := range strings.Fields(string(out)) {
		for _, heavy := range []string{"github.com/docker/compose/", "github.com/compose-spec/", "k8s.io/"} {
			assert.False(t, strings.HasPrefix(dep, heavy), "berth links %s", dep)
		}
	}
}

func TestCheckPrintsNoSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.toml")
	require.NoError(t, os.WriteFile(path, []byte(`
[registry]
image = "127.0.0.1:5000/{project}"
username = "deployer"
password = "registry-pw-123"
[build]
args = { NPM_TOKEN = "npm-token-456" }
[environments.web]
driver = "container"
[environments.web.container]
env = ["DB_PASSWORD=db-pw-789", "MODE=secretmode"]
[environments.staging]
driver = "kube"
manual = true
`), 0o644))
	var out, errOut bytes.Buffer
	code := run([]string{"check", "--config", path}, &out, &errOut)
	require.Zero(t, code, errOut.String())
	for _, secret := range []string{"registry-pw-123", "npm-token-456", "db-pw-789", "secretmode"} {
		assert.NotContains(t, out.String(), secret)
	}
	assert.Contains(t, out.String(), `"DB_PASSWORD=[MASKED]"`)
	assert.Contains(t, out.String(), "deployer", "user names are not secret")
	assert.Contains(t, out.String(), "# warning: environment staging is manual but not protected")
}

func TestConfigFlagAnywhere(t *testing.T) {
	good := filepath.Join(t.TempDir(), "berth.toml")
	require.NoError(t, os.WriteFile(good, []byte("log_level = \"info\"\n"), 0o644))
	bad := filepath.Join(t.TempDir(), "berth.toml")
	require.NoError(t, os.WriteFile(bad, []byte("log_level = \n"), 0o644))
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"check", "--config", good}, 0, good},
		{[]string{"check", "--config=" + good}, 0, good},
		{[]string{"--config", good, "check"}, 0, good},
		{[]string{"check", "--config", bad}, 2, bad + ":1"},
		{[]string{"check", "--config", "/nonexistent/berth.toml"}, 2, "/nonexistent/berth.toml"},
		{[]string{"check", "--config"}, 2, "--config needs a file"},
		{[]string{"--config", good, "check", "--config", bad}, 2, "--config is given twice"},
		{[]string{"check", "extra"}, 2, "check takes no arguments"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		code := run(tt.args, &out, &errOut)
		assert.Equal(t, tt.code, code, "%v: %s%s", tt.args, out.String(), errOut.String())
		assert.Contains(t, out.String()+errOut.String(), tt.want, "%v", tt.args)
	}
}

func TestExecJobIDsCannotCollide(t *testing.T) {
	first, last := execJobID(0, 0), execJobID(1e9-1, 999)
	assert.Greater(t, first, int64(9e15), "far above any id GitLab hands out")
	assert.Greater(t, last, first)
	assert.Less(t, last, int64(math.MaxInt64))
}

// driverOpener is the one registration of the drivers: a name it does
// not know is refused, never taken for the container driver.
func TestDriverOpenerRefusesAnUnknownDriver(t *testing.T) {
	s := settings.Defaults()
	s.Environments["edge"] = settings.Environment{Driver: "nomad"}
	a := &app{settings: &s, getenv: func(string) string { return "" }}
	open := a.driverOpener(&bytes.Buffer{}, a.credentials(), t.TempDir())
	_, err := open("edge")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `environment edge: berth has no driver "nomad" (environments.edge.driver in berth.toml): use container, compose, kube`)
	_, err = open("nowhere")
	assert.ErrorContains(t, err, `no environment "nowhere" in berth.toml`)
	d, err := open("web")
	require.NoError(t, err)
	assert.IsType(t, &containers.Driver{}, d)
}

// berth spares runs detached, with no stderr: without log_file its last
// run's log stays in builds_dir, and berth check says what went wrong.
func TestCheckSaysWhySparesFailed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "berth.toml")
	require.NoError(t, os.WriteFile(path, []byte(fmt.Sprintf("builds_dir = %q\n", filepath.Join(dir, "builds"))), 0o644))
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "no-engine.sock"))
	var out, errOut bytes.Buffer
	assert.NotZero(t, run([]string{"spares", "--config", path}, &out, &errOut))
	assert.NotContains(t, errOut.String(), "level=", "the log goes to builds_dir")
	code := run([]string{"check", "--config", path}, &out, &errOut)
	require.Zero(t, code, errOut.String())
	assert.Contains(t, out.String(), "# warning: the last berth spares run ("+filepath.Join(dir, "builds", ".berth-spares.log")+") failed")
	assert.Contains(t, out.String(), "no-engine.sock")
}
