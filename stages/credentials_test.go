package stages

import (
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
		JobRegistry: "reg.example.com", JobUser: "gitlab-ci-token", JobPassword: "p2", DockerConfig: fromConfig}
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
	a, source, err := c.For("reg.example.com/g/app:1")
	require.NoError(t, err)
	assert.Equal(t, "gitlab-ci-token", a.Username, "then the job's CI_REGISTRY_USER")
	assert.Equal(t, "the job's CI_REGISTRY_USER", source)
	assert.NotContains(t, source, "p2", "the source names no secret")
}
