package stages

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/client"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/enginetest"
)

// Helpers for tests against the rig's engine and registry (.ci/rig.sh up).

const testRegistry = enginetest.Registry

// realEngine is the rig's engine, with its registry.
func realEngine(t *testing.T) *client.Client { return enginetest.EngineAndRegistry(t) }

var (
	unique    = enginetest.Unique
	sourceDir = enginetest.SourceDir
)

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
	return &Images{Engine: c, Creds: &target.Credentials{}, Out: &out, Retries: 2, Sleep: func(time.Duration) {}}, &out
}
