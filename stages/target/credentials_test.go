package target

import (
	"strings"
	"testing"

	"github.com/docker/docker/api/types/registry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCredentialsOrder(t *testing.T) {
	fromConfig := func(host string) (registry.AuthConfig, bool) {
		return registry.AuthConfig{Username: "cfg-" + host}, host != "nowhere.example.com"
	}
	c := &Credentials{TOMLHost: "reg.example.com", TOMLUser: "toml", TOMLPassword: "p1",
		JobHost: "reg.example.com", JobProject: "G/App", JobUser: "gitlab-ci-token", JobPassword: "p2", DockerConfig: fromConfig}
	tests := []struct {
		ref, user, source string
	}{
		{"reg.example.com/g/app:1", "toml", "berth.toml [registry]"},
		{"other.example.com/g/app:1", "cfg-other.example.com", "docker config.json"},
		{"nowhere.example.com/app", "", "none"},
	}
	for _, tt := range tests {
		a, source, err := c.For(tt.ref)
		require.NoError(t, err)
		assert.Equal(t, tt.user, a.Username, tt.ref)
		assert.Equal(t, tt.source, source, tt.ref)
	}
	c.TOMLUser = ""
	for _, ref := range []string{"reg.example.com/g/app:1", "reg.example.com/g/app/sub@sha256:" + strings.Repeat("a", 64)} {
		a, source, err := c.For(ref)
		require.NoError(t, err)
		assert.Equal(t, "gitlab-ci-token", a.Username, "then the job token, for its own project")
		assert.Equal(t, "the job's registry login", source)
		assert.NotContains(t, source, "p2", "the source names no secret")
	}
	// the job token never goes to another project's path or another host
	for _, ref := range []string{"reg.example.com/g/other:1", "reg.example.com/g/app-other:1", "reg.example.com/g:1", "evil.example.com/g/app:1"} {
		a, _, err := c.For(ref)
		require.NoError(t, err)
		assert.NotEqual(t, "p2", a.Password, ref)
	}
	a, _, err := c.WithoutJob().For("reg.example.com/g/app:1")
	require.NoError(t, err)
	assert.NotEqual(t, "p2", a.Password, "a pull secret never holds the job token")
}
