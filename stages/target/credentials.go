package target

import (
	"io"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config"
	"github.com/docker/docker/api/types/registry"

	"github.com/berthci/berth/executor/failure"
)

// Credentials find a registry login, in order: the TOML, the payload's
// registry login (the job token) for the job's own project's repository,
// then docker's config.json and its credential helpers. The references
// berth asks for are its own (the trusted repository, digests it
// resolved), never a name a job chose, so no login goes to a job's host.
type Credentials struct {
	TOMLHost, TOMLUser, TOMLPassword string
	// JobHost and JobProject say where the job token may go: the GitLab
	// registry of the payload's credentials, at the project's path and
	// below it.
	JobHost, JobProject, JobUser, JobPassword string
	// DockerConfig looks a host up in config.json; nil skips it.
	DockerConfig func(host string) (registry.AuthConfig, bool)
}

// WithoutJob is c without the job token: for what outlives the job (a
// Kubernetes pull secret), since GitLab revokes the token when it ends.
func (c *Credentials) WithoutJob() *Credentials {
	out := *c
	out.JobUser, out.JobPassword = "", ""
	return &out
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
		return registry.AuthConfig{}, "", failure.Buildf("image %q is not a valid reference: %v", ref, err)
	}
	host, repo := reference.Domain(named), reference.Path(named)
	project := strings.ToLower(c.JobProject)
	switch {
	case c.TOMLUser != "" && c.TOMLHost == host:
		return registry.AuthConfig{Username: c.TOMLUser, Password: c.TOMLPassword, ServerAddress: host}, "berth.toml [registry]", nil
	case c.JobUser != "" && c.JobHost == host && project != "" && (repo == project || strings.HasPrefix(repo, project+"/")):
		return registry.AuthConfig{Username: c.JobUser, Password: c.JobPassword, ServerAddress: host}, "the job's registry login", nil
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
		return "", "", failure.Systemf("encode registry credentials: %w", err)
	}
	return enc, source, nil
}
