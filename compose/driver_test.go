package compose_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/compose"
	"github.com/berthci/berth/compose/apply"
	"github.com/berthci/berth/executor/enginetest"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages"
)

const testRegistry = enginetest.Registry

func realEngine(t *testing.T) *client.Client { return enginetest.EngineAndRegistry(t) }

// release builds and pushes an image of the rig's app on busybox (for the
// health check's wget); broken ones exit at start.
func release(t *testing.T, c *client.Client, repo, version string, broken bool) driver.Release {
	t.Helper()
	ctx := context.Background()
	im := &stages.Images{Engine: c, Creds: &target.Credentials{}, Out: io.Discard, Retries: 1, Sleep: func(time.Duration) {}}
	df := fmt.Sprintf("FROM busybox:local\nCOPY --from=web:local /app /app\nENV APP_VERSION=%s\nENTRYPOINT [\"/app\"]\n", version)
	if broken {
		df += "ENTRYPOINT [\"sh\", \"-c\", \"echo cannot start: no database; exit 3\"]\n"
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644))
	ref := repo + ":develop"
	_, err := im.Build(ctx, stages.BuildOptions{Dir: dir, Dockerfile: "Dockerfile", Tags: []string{ref}})
	require.NoError(t, err)
	digest, err := im.Push(ctx, ref)
	require.NoError(t, err)
	return driver.Release{Env: "integration", Image: repo + "@" + digest, Digest: digest, Tag: "develop", Ref: "develop", Pipeline: 1, Job: time.Now().UnixNano() % 1e6, By: "tester"}
}

const composeFile = `services:
  web:
    image: %s:develop
    ports: ["127.0.0.1:%d:5000"]
    environment:
      GREETING: ${GREETING}
    depends_on: [db]
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:5000/health"]
      interval: 1s
      timeout: 2s
      retries: 20
  db:
    image: busybox:local
    command: ["sleep", "1000000"]
`

type fixture struct {
	c       *client.Client
	d       *compose.Driver
	out     *bytes.Buffer
	repo    string
	project string
	port    int
}

func newFixture(t *testing.T, port int) *fixture {
	c := realEngine(t)
	project := fmt.Sprintf("berthtest%d", time.Now().UnixNano()%1e8)
	repo := testRegistry + "/berth-test/" + project
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(fmt.Sprintf(composeFile, repo, port)), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".env"), []byte("GREETING=hello from .env\n"), 0o644))
	svc, err := apply.New(c, false)
	require.NoError(t, err)
	var out bytes.Buffer
	d := &compose.Driver{
		Env: "integration", Engine: c, Apply: svc, Creds: &target.Credentials{}, Out: &out, Dir: dir,
		Spec: settings.ComposeSpec{Project: project, WaitTimeout: settings.Duration(30 * time.Second), Keep: 10},
	}
	t.Cleanup(func() {
		list, _ := c.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+project))})
		for _, x := range list {
			_ = c.ContainerRemove(context.Background(), x.ID, container.RemoveOptions{Force: true})
		}
		_ = c.NetworkRemove(context.Background(), project+"_default")
	})
	return &fixture{c: c, d: d, out: &out, repo: repo, project: project, port: port}
}

func (f *fixture) get(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", f.port))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// containers maps each service to its container.
func (f *fixture) containers(t *testing.T) map[string]container.Summary {
	list, err := f.c.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+f.project))})
	require.NoError(t, err)
	out := map[string]container.Summary{}
	for _, c := range list {
		out[c.Labels["com.docker.compose.service"]] = c
	}
	return out
}

func TestComposeDeployRollOutAndRollBack(t *testing.T) {
	f := newFixture(t, 16020)
	ctx := context.Background()

	v1 := release(t, f.c, f.repo, "v1", false)
	require.NoError(t, f.d.Deploy(ctx, v1), f.out.String())
	assert.Equal(t, "app v1", f.get(t), "first deploy: both services come up")
	first := f.containers(t)
	require.Len(t, first, 2)
	assert.Equal(t, v1.Image, first["web"].Image, "by digest")
	ins, err := f.c.ContainerInspect(ctx, first["web"].ID)
	require.NoError(t, err)
	assert.Contains(t, ins.Config.Env, "GREETING=hello from .env", "interpolated from .env")
	assert.Equal(t, "integration", first["web"].Labels[driver.LabelEnv])
	assert.Empty(t, first["db"].Labels[driver.LabelEnv], "only the chosen services take berth's labels")

	// what `docker compose -p NAME ps` sees, through compose itself
	svc, err := apply.New(f.c, false)
	require.NoError(t, err)
	ps, err := svc.Ps(ctx, f.project)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"web": "running", "db": "running"}, ps)

	v2 := release(t, f.c, f.repo, "v2", false)
	require.NotEqual(t, v1.Digest, v2.Digest)
	require.NoError(t, f.d.Deploy(ctx, v2), f.out.String())
	assert.Equal(t, "app v2", f.get(t), "the same tag pushed again rolls out")
	second := f.containers(t)
	assert.Equal(t, first["db"].ID, second["db"].ID, "the dependency is left alone")
	assert.NotEqual(t, first["web"].ID, second["web"].ID)

	broken := release(t, f.c, f.repo, "v3", true)
	err = f.d.Deploy(ctx, broken)
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "did not come up")
	assert.Contains(t, err.Error(), "cannot start: no database", "the failing service's last log lines")
	assert.Contains(t, err.Error(), "previous digest")
	assert.Equal(t, "app v2", f.get(t), "the previous digest serves again")
	assert.Equal(t, v2.Image, f.containers(t)["web"].Image)
	assert.Equal(t, first["db"].ID, f.containers(t)["db"].ID)

	hist, err := f.d.History(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(hist), 3)
	assert.Equal(t, v2.Digest, hist[0].Digest)
	assert.Equal(t, "serving", hist[0].Result)
	assert.Equal(t, "failed, previous restored", hist[1].Result)
	assert.Equal(t, broken.Digest, hist[1].Digest)

	t0 := time.Now()
	rec, err := f.d.Rollback(ctx, "", "alice")
	require.NoError(t, err, f.out.String())
	assert.Less(t, time.Since(t0), 20*time.Second)
	assert.Equal(t, v1.Digest, rec.Digest)
	assert.Equal(t, "app v1", f.get(t))
	hist, err = f.d.History(ctx)
	require.NoError(t, err)
	assert.Equal(t, v1.Digest, hist[0].Digest)
	assert.Equal(t, "serving", hist[0].Result)
	results := map[string]string{}
	for _, h := range hist[1:] {
		results[h.Digest] = h.Result
	}
	assert.Equal(t, "rolled back by alice", results[v2.Digest], "newest deploys first: %v", hist)

	_, err = f.d.Rollback(ctx, "sha256:nothing-like-this", "bob")
	assert.ErrorContains(t, err, "holds no sha256:nothing-like-this")
}

func TestComposeFirstDeployThatFailsSaysNothingServes(t *testing.T) {
	f := newFixture(t, 16021)
	err := f.d.Deploy(context.Background(), release(t, f.c, f.repo, "v0", true))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nothing ran before")
}

func TestComposeServicesMustExist(t *testing.T) {
	f := newFixture(t, 16022)
	f.d.Spec.Services = []string{"api"}
	err := f.d.Deploy(context.Background(), release(t, f.c, f.repo, "v0", false))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `no service "api"`)
}

func TestComposeLockIsTheEnvironmentsLock(t *testing.T) {
	f := newFixture(t, 16023)
	ctx := context.Background()
	h := driver.Holder{Job: 1, Pipeline: 1, By: "a", Deadline: time.Now().Add(time.Hour)}
	unlock, err := f.d.Lock(ctx, h, time.Second)
	require.NoError(t, err)
	h.Job = 2
	_, err = f.d.Lock(ctx, h, time.Second)
	assert.ErrorContains(t, err, "still locked by job 1")
	unlock()
	unlock, err = f.d.Lock(ctx, h, time.Second)
	require.NoError(t, err)
	unlock()
}
