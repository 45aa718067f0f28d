package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/settings"
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
