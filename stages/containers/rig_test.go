package containers

// Helpers for the container driver's tests against the rig's engine and
// registry (.ci/rig.sh up).

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/enginetest"
	"github.com/berthci/berth/stages"
	"github.com/berthci/berth/stages/target"
)

const testRegistry = enginetest.Registry

var (
	unique    = enginetest.Unique
	sourceDir = enginetest.SourceDir
)

// realEngine is the rig's engine, with its registry.
func realEngine(t *testing.T) *client.Client { return enginetest.EngineAndRegistry(t) }

func testImages(c *client.Client) (*stages.Images, *bytes.Buffer) {
	var out bytes.Buffer
	return &stages.Images{Engine: c, Creds: &target.Credentials{}, Out: &out, Retries: 2, Sleep: func(time.Duration) {}}, &out
}

type natPort = nat.Port

func portMap(ip, hostPort string, p nat.Port) nat.PortMap {
	return nat.PortMap{p: []nat.PortBinding{{HostIP: ip, HostPort: hostPort}}}
}

var berthBuild struct {
	once sync.Once
	path string
	err  error
}

// berthBinary builds cmd/berth once per test run, static, as the anchor
// image's binary.
func berthBinary(t *testing.T) string {
	t.Helper()
	berthBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "berth-stages-test-")
		if err != nil {
			berthBuild.err = err
			return
		}
		berthBuild.path = filepath.Join(dir, "berth")
		cmd := exec.Command("go", "build", "-o", berthBuild.path, "../../cmd/berth")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			berthBuild.err = fmt.Errorf("build berth: %v\n%s", err, out)
		}
	})
	require.NoError(t, berthBuild.err)
	return berthBuild.path
}
