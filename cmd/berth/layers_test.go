package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/berthci/berth/"

// deps lists what pkg links, with -deps, or imports directly.
func deps(t *testing.T, pkg string, all bool) []string {
	t.Helper()
	args := []string{"list", "-f", `{{join .Imports "\n"}}`, "../../" + pkg}
	if all {
		args = []string{"list", "-deps", "../../" + pkg}
	}
	out, err := exec.Command("go", args...).Output()
	require.NoError(t, err, "go list %s", pkg)
	return strings.Fields(string(out))
}

// The arrows point one way (docs/drivers.md): the leaves import no other
// package of berth's but leaves; the protocol and each driver stand on the
// leaves and never on each other.
func TestLayers(t *testing.T) {
	leaves := []string{"executor/failure", "executor/stop", "executor/joblog", "executor/engine", "executor/settings", "stages/driver"}
	isLeaf := func(p string) bool {
		for _, l := range leaves {
			if p == module+l {
				return true
			}
		}
		return false
	}
	for _, leaf := range leaves {
		for _, d := range deps(t, leaf, false) {
			if strings.HasPrefix(d, module) {
				assert.True(t, isLeaf(d), "leaf %s imports %s", leaf, d)
			}
		}
	}
	// a driver may import its own subpackages and the leaves only
	drivers := map[string][]string{
		"stages/target":           nil,
		"stages/containers":       {"stages/target", "stages/containers/proxy"},
		"stages/containers/proxy": {"stages/target"},
		"compose":                 {"stages/target"},
		"compose/apply":           {"compose"},
		"kube":                    nil,
		"kube/rollout":            {"kube"},
	}
	for pkg, own := range drivers {
		for _, d := range deps(t, pkg, false) {
			if !strings.HasPrefix(d, module) || isLeaf(d) {
				continue
			}
			ok := false
			for _, o := range own {
				ok = ok || d == module+o
			}
			assert.True(t, ok, "driver package %s imports %s", pkg, d)
		}
	}
	for _, d := range deps(t, "executor", false) {
		for _, above := range []string{"stages/containers", "stages/target", "compose", "kube"} {
			assert.False(t, strings.HasPrefix(d, module+above), "the protocol imports the driver package %s", d)
		}
		assert.NotEqual(t, module+"stages", d, "the protocol imports the stage logic")
	}
}

// The helpers link what their driver needs and nothing of the protocol:
// berth-kube talks to Kubernetes only.
func TestHelpersLinkNoProtocol(t *testing.T) {
	for _, helper := range []string{"cmd/berth-kube", "cmd/berth-compose"} {
		for _, d := range deps(t, helper, true) {
			assert.NotEqual(t, module+"executor", d, "%s links the protocol", helper)
			assert.NotEqual(t, module+"executor/api", d, "%s links the GitLab payload types", helper)
			if helper == "cmd/berth-kube" {
				assert.False(t, strings.HasPrefix(d, "github.com/docker/docker/"), "berth-kube links %s", d)
				assert.False(t, strings.HasPrefix(d, "github.com/google/go-containerregistry/"), "berth-kube links %s", d)
			}
		}
	}
}
