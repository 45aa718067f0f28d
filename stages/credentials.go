package stages

import (
	"io"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config"
	"github.com/docker/docker/api/types/registry"

	"github.com/berthci/berth/executor"
)

// Credentials find a registry login, in order: the TOML, the job's
// CI_REGISTRY_USER/CI_REGISTRY_PASSWORD for CI_REGISTRY, then docker's
// config.json and its credential helpers.
type Credentials struct {
	TOMLHost, TOMLUser, TOMLPassword  string
	JobRegistry, JobUser, JobPassword string
	// DockerConfig looks a host up in config.json; nil skips it.
	DockerConfig func(host string) (registry.AuthConfig, bool)
}

// DockerConfigFile reads the runner user's ~/.docker/config.json (or
// $DOCKER_CONFIG), including credential helpers.
func DockerConfigFile(host string) (registry.AuthConfig, bool) {
	cf := config.LoadDefaultConfigFile(io.Discard)
	a, err := cf.GetAuthConfig(host)
	if err != nil || (a.Username == "" && a.IdentityToken == "" && a.RegistryToken == "") {
		return registry.AuthConfig{}, false
	}
	return registry.AuthConfig{Username: a.Username, Password: a.Password, ServerAddress: host,
		IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}, true
}

// For returns the login for ref's registry and where it came from; the
// source names no secret, so it may be printed.
func (c *Credentials) For(ref string) (registry.AuthConfig, string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return registry.AuthConfig{}, "", executor.Buildf("image %q is not a valid reference: %v", ref, err)
	}
	host := reference.Domain(named)
	switch {
	case c.TOMLUser != "" && c.TOMLHost == host:
		return registry.AuthConfig{Username: c.TOMLUser, Password: c.TOMLPassword, ServerAddress: host}, "berth.toml [registry]", nil
	case c.JobUser != "" && c.JobRegistry == host:
		return registry.AuthConfig{Username: c.JobUser, Password: c.JobPassword, ServerAddress: host}, "the job's CI_REGISTRY_USER", nil
	}
	if c.DockerConfig != nil {
		if a, ok := c.DockerConfig(host); ok {
			return a, "docker config.json", nil
		}
	}
	return registry.AuthConfig{ServerAddress: host}, "none", nil
}

// Encoded is For, encoded for the engine's X-Registry-Auth header.
func (c *Credentials) Encoded(ref string) (string, string, error) {
	a, source, err := c.For(ref)
	if err != nil {
		return "", "", err
	}
	enc, err := registry.EncodeAuthConfig(a) // the engine wants the header even when empty
	if err != nil {
		return "", "", executor.Systemf("encode registry credentials: %w", err)
	}
	return enc, source, nil
}
