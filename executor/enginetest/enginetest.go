// Package enginetest gives tests the real Docker engine and registry of the
// test rig (.ci/rig.sh up): without them a test skips, or fails under
// BERTH_REQUIRE_RIG=1 (CI), so nothing passes by not running.
package enginetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// HelperImage is the rig's job helper image (berth.toml job.helper_image).
const HelperImage = "berth-helper:local"

// Registry is the rig's registry.
const Registry = "127.0.0.1:5000"

// Engine is the rig's engine.
func Engine(t testing.TB) *client.Client {
	t.Helper()
	return connect(t, false)
}

// EngineAndRegistry is the rig's engine, once its registry answers too.
func EngineAndRegistry(t testing.TB) *client.Client {
	t.Helper()
	return connect(t, true)
}

func connect(t testing.TB, registry bool) *client.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no engine tests")
	}
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = c.Ping(ctx)
	}
	if err == nil && registry {
		var resp *http.Response
		if resp, err = http.Get("http://" + Registry + "/v2/"); err == nil {
			resp.Body.Close()
		}
	}
	if err != nil {
		if os.Getenv("BERTH_REQUIRE_RIG") == "1" {
			t.Fatalf("the test rig's engine and registry are required: %v", err)
		}
		t.Skipf("no engine or registry (run .ci/rig.sh up): %v", err)
	}
	return c
}

// Unique is a name no other test run uses.
func Unique(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()%1e10)
}

// SourceDir writes files (path → content) into a new directory: a build
// context, a checkout.
func SourceDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
