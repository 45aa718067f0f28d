package compose

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/berthci/berth/stages"
)

// Interpolation in berth-compose must not see the job's variables.
func TestHelperEnvKeepsNoJobVariables(t *testing.T) {
	got := stages.HelperEnv([]string{"PATH=/bin", "HOME=/root", "DOCKER_HOST=unix:///x", "CUSTOM_ENV_CI_JOB_TOKEN=secret",
		"CUSTOM_ENV_DB_PASSWORD=masked", "JOB_RESPONSE_FILE=/tmp/job.json", "BERTH_CONFIG=/etc/b.toml"})
	assert.Equal(t, []string{"PATH=/bin", "HOME=/root", "DOCKER_HOST=unix:///x"}, got)
}
