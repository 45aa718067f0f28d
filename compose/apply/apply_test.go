package apply

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker/docker/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/compose"
	"github.com/berthci/berth/stages/driver"
)

// A project that does not load, names a service it does not have or
// has none on the release's repository is refused before the engine is
// asked anything: class invalid, nothing changed.
func TestApplyRefusesBeforeTouchingTheEngine(t *testing.T) {
	c, err := client.NewClientWithOpts(client.WithHost("tcp://127.0.0.1:1")) // nothing listens
	require.NoError(t, err)
	svc, err := New(c, false)
	require.NoError(t, err)
	tests := []struct {
		name     string
		compose  string
		services []string
		want     string
	}{
		{"does not load", "services: [not, a, map]\n", nil, "load compose project shop"},
		{"no such service", "services:\n  web:\n    image: reg.example/app:1\n", []string{"api"}, `project shop has no service "api"`},
		{"no service on the repository", "services:\n  web:\n    image: reg.example/other:1\n", nil, "no service of project shop uses reg.example/app"},
		{"refused by the checks", "services:\n  web:\n    image: reg.example/app:1\n    privileged: true\n", nil, "privileged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(tt.compose), 0o644))
			res, err := svc.Apply(context.Background(), compose.Request{Env: "integration", Project: "shop", WorkingDir: dir,
				Image: "reg.example/app@sha256:0123456789012345678901234567890123456789012345678901234567890123", Services: tt.services})
			require.NoError(t, err)
			assert.Equal(t, driver.ClassInvalid, res.Class)
			assert.Contains(t, res.Error, tt.want)
		})
	}
}

func TestChosenServices(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(
		"services:\n  web:\n    image: reg.example/app:1\n  worker:\n    image: reg.example/app:latest\n  db:\n    image: postgres\n"), 0o644))
	req := compose.Request{Env: "integration", Project: "shop", WorkingDir: dir, Image: "reg.example/app@sha256:0123456789012345678901234567890123456789012345678901234567890123"}
	p, err := Load(context.Background(), req)
	require.NoError(t, err)
	got, err := chosen(p, req)
	require.NoError(t, err)
	assert.Equal(t, []string{"web", "worker"}, got, "every service on the release's repository")
	assert.Equal(t, "shop", p.Services["web"].CustomLabels["com.docker.compose.project"], "labelled as the compose CLI does")
	assert.Equal(t, "docker.io/library/postgres", repository("postgres"))
	assert.Equal(t, "Not A Ref", repository("Not A Ref"))
}
