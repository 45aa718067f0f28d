package compose

import (
	"testing"

	"github.com/berthci/berth/stages/driver"

	"github.com/stretchr/testify/assert"
)

// Interpolation in berth-compose must not see the job's variables.
func TestHelperEnvKeepsNoJobVariables(t *testing.T) {
	got := driver.HelperEnv([]string{"PATH=/bin", "HOME=/root", "DOCKER_HOST=unix:///x", "CUSTOM_ENV_CI_JOB_TOKEN=secret",
		"CUSTOM_ENV_DB_PASSWORD=masked", "JOB_RESPONSE_FILE=/tmp/job.json", "BERTH_CONFIG=/etc/b.toml"})
	assert.Equal(t, []string{"PATH=/bin", "HOME=/root", "DOCKER_HOST=unix:///x"}, got)
}
