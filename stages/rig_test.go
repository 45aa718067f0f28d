package stages

import (
	"bytes"
	"fmt"
	"net/http"
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
)

// Helpers for tests against the rig's engine and registry (.ci/rig.sh up).

const testRegistry = enginetest.Registry

// realEngine is the rig's engine, with its registry.
func realEngine(t *testing.T) *client.Client { return enginetest.EngineAndRegistry(t) }

// unique is a name no other test run uses.
func unique(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()%1e10)
}

// sourceDir writes a build context.
func sourceDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
	return dir
}

// registryDigest asks the registry for a tag's manifest digest.
func registryDigest(t *testing.T, repo, tag string) (string, int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, fmt.Sprintf("http://%s/v2/%s/manifests/%s", testRegistry, repo, tag), nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.Header.Get("Docker-Content-Digest"), resp.StatusCode
}

func testImages(c *client.Client) (*Images, *bytes.Buffer) {
	var out bytes.Buffer
	return &Images{Engine: c, Creds: &Credentials{}, Out: &out, Retries: 2, Sleep: func(time.Duration) {}}, &out
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
		cmd := exec.Command("go", "build", "-o", berthBuild.path, "../cmd/berth")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			berthBuild.err = fmt.Errorf("build berth: %v\n%s", err, out)
		}
	})
	require.NoError(t, berthBuild.err)
	return berthBuild.path
}
