package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// develop deploys itself to a compose integration environment: the team's
// compose file from the repository, the app service on the new digest.
func TestE2EDevelopDeploysToCompose(t *testing.T) {
	r := needRig(t)
	r.withHelper(t, "berth-compose")
	project := fmt.Sprintf("berthe2e%d", time.Now().UnixNano()%1e8)
	image := "127.0.0.1:5000/berth-e2e/" + project
	repo := newAppRepo(t)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(fmt.Sprintf(`services:
  web:
    image: %s:develop
    ports: ["127.0.0.1:6103:5000"]
    depends_on: [db]
  db:
    image: busybox:local
    command: ["sleep", "1000000"]
`, image)), 0o644))
	repo.commit("dev1")
	repo.git("checkout", "-qb", "develop")
	removeComposeProject(t, project)
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = %q

[environments.integration]
driver = "compose"
[environments.integration.compose]
project = %q
wait_timeout = "30s"
`, image, project))

	for _, version := range []string{"dev1", "dev2"} {
		if version != "dev1" {
			repo.commit(version)
		}
		res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "develop", "--stage", "deploy", "--image", "busybox:local")
		tr := traceLines(res.Trace)
		require.Equal(t, "success", res.State, tr)
		assert.Contains(t, tr, "berth: integration: compose up, project "+project+", on develop\n")
		assert.Contains(t, tr, "berth: integration: web up and running in ")
		assert.Regexp(t, `berth: done in \S+: integration runs \S+@sha256:[0-9a-f]{64} \(develop\)`, tr)
		assert.Equal(t, "app "+version, httpGet("http://127.0.0.1:6103/"))
		r.requireNothingLeft(t, res.JobID)
	}

	out, err := exec.Command(r.berth, "--config", toml, "history", "integration").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "serving")
	assert.Contains(t, string(out), "replaced")

	// rollback by hand, from a checkout of the project (its compose.yaml)
	rb := exec.Command(r.berth, "--config", toml, "rollback", "integration")
	rb.Dir = repo.dir
	out, err = rb.CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "integration rolled back in")
	assert.Equal(t, "app dev1", httpGet("http://127.0.0.1:6103/"))
}

// A compose environment on a Docker host reached over ssh://: berth-compose
// dials it through docker's connection helper with the environment's ssh
// options.
func TestE2EComposeOverSSH(t *testing.T) {
	r := needRig(t)
	key := rigSSHKey(t)
	r.withHelper(t, "berth-compose")
	project := fmt.Sprintf("berthssh%d", time.Now().UnixNano()%1e8)
	image := "127.0.0.1:5000/berth-e2e/" + project
	repo := newAppRepo(t)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "compose.yaml"), []byte(fmt.Sprintf(
		"services:\n  web:\n    image: %s:develop\n    ports: [\"127.0.0.1:6109:5000\"]\n", image)), 0o644))
	repo.commit("over-ssh")
	repo.git("checkout", "-qb", "develop")
	removeComposeProject(t, project)
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = %q
[environments.integration]
driver = "compose"
docker_host = "ssh://root@127.0.0.1:2222"
ssh_options = ["-i", %q, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
[environments.integration.compose]
project = %q
`, image, key, project))
	res := r.runJob(t, toml, "--repo", repo.dir, "--ref", "develop", "--stage", "deploy", "--image", "busybox:local")
	require.Equal(t, "success", res.State, traceLines(res.Trace))
	assert.Equal(t, "app over-ssh", httpGet("http://127.0.0.1:6109/"))
	r.requireNothingLeft(t, res.JobID)
}

// removeComposeProject removes, when the test ends, what a compose
// environment's project made: its containers and its default network.
func removeComposeProject(t *testing.T, project string) {
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+project).Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("docker", "rm", "-f", id).Run()
		}
		_ = exec.Command("docker", "network", "rm", project+"_default").Run()
		for _, c := range []string{"berth-ledger-compose-" + project, "berth-lock-compose-" + project} {
			_ = exec.Command("docker", "rm", "-f", c).Run()
		}
	})
}
