package executor

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/enginetest"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// realEngine is the rig's Docker engine; without one the test is skipped,
// or fails under BERTH_REQUIRE_RIG=1 (CI).
func realEngine(t *testing.T) *client.Client { return enginetest.Engine(t) }

func testExecutor(t *testing.T, eng Engine, job *Job) (*Executor, *bytes.Buffer) {
	s := settings.Defaults()
	s.BuildsDir = t.TempDir()
	s.CacheDir = t.TempDir()
	s.Job.HelperImage = enginetest.HelperImage
	var out bytes.Buffer
	log := logrus.New()
	log.SetOutput(&out)
	return New(eng, &s, job, &out, log, "test"), &out
}

func testJob(id int64, img string) *Job {
	return NewJob(&api.JobResponse{ID: id, Token: "glcbt-token-x", RunnerInfo: api.RunnerInfo{Timeout: 60},
		JobInfo: api.JobInfo{Name: "t", Stage: "test", PipelineID: 1, ProjectFullPath: "g/p"},
		GitInfo: api.GitInfo{Ref: "master", RefType: "branch"}, Image: api.Image{Name: img}})
}

func jobLeftovers(t *testing.T, c *client.Client, e *Executor) (int, int) {
	cs, err := c.ContainerList(context.Background(), container.ListOptions{All: true, Filters: e.jobFilter()})
	require.NoError(t, err)
	ns, err := c.NetworkList(context.Background(), network.ListOptions{Filters: e.jobFilter()})
	require.NoError(t, err)
	return len(cs), len(ns)
}

func TestCleanupIsIdempotentAndNeedsNoPrepare(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	e, _ := testExecutor(t, c, testJob(time.Now().UnixNano()%1e9, "busybox:local"))
	require.NoError(t, e.Cleanup(ctx), "cleanup without prepare")

	require.NoError(t, e.Prepare(ctx))
	nc, nn := jobLeftovers(t, c, e)
	assert.Equal(t, 2, nc, "the job container and its helper")
	assert.Equal(t, 1, nn)
	require.NoError(t, e.Cleanup(ctx))
	require.NoError(t, e.Cleanup(ctx), "a second cleanup")
	nc, nn = jobLeftovers(t, c, e)
	assert.Zero(t, nc)
	assert.Zero(t, nn)
	assert.NoDirExists(t, JobDir(e.Settings, e.Job))
}

func TestPrepareWithMissingImageIsBuildFailure(t *testing.T) {
	c := realEngine(t)
	e, out := testExecutor(t, c, testJob(time.Now().UnixNano()%1e9, "127.0.0.1:5000/berth-test/missing:v9"))
	err := e.Prepare(context.Background())
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "not found")
	assert.NotContains(t, out.String()+err.Error(), "glcbt-token-x")
	require.NoError(t, e.Cleanup(context.Background()))
}

func TestSweepRemovesOnlyJobsThatAreOver(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	s := settings.Defaults()
	s.BuildsDir = t.TempDir()
	now := time.Now()
	base := now.UnixNano() % 1e9
	// a project of its own: other tests' jobs run on this engine meanwhile
	project := "sweep-test/" + strconv.FormatInt(base, 10)
	mk := func(id int64, deadline time.Time) {
		labels := map[string]string{LabelJob: strconv.FormatInt(id, 10), LabelProject: project, LabelDeadline: deadline.UTC().Format(time.RFC3339)}
		name := "berth-job-" + strconv.FormatInt(id, 10)
		_, err := c.NetworkCreate(ctx, name, network.CreateOptions{Labels: labels})
		require.NoError(t, err)
		_, err = c.ContainerCreate(ctx, &container.Config{Image: "busybox:local", Labels: labels}, nil, nil, nil, name)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(JobDir(&s, &Job{ID: id}), 0o755))
	}
	mk(base, now.Add(-time.Minute)) // over
	mk(base+1, now.Add(time.Hour))  // still running
	defer func() {
		for _, id := range []int64{base, base + 1} {
			name := "berth-job-" + strconv.FormatInt(id, 10)
			_ = c.ContainerRemove(ctx, name, container.RemoveOptions{Force: true})
			_ = c.NetworkRemove(ctx, name)
		}
	}()

	sw := &Sweeper{Engine: c, Settings: &s, Now: time.Now}
	res, err := sw.Sweep(ctx, SweepOptions{Project: project, DryRun: true})
	require.NoError(t, err)
	assert.Contains(t, res.Containers, "berth-job-"+strconv.FormatInt(base, 10))
	_, err = c.ContainerInspect(ctx, "berth-job-"+strconv.FormatInt(base, 10))
	require.NoError(t, err, "a dry run removes nothing")

	res, err = sw.Sweep(ctx, SweepOptions{Project: project})
	require.NoError(t, err)
	assert.Contains(t, res.Containers, "berth-job-"+strconv.FormatInt(base, 10))
	assert.NotContains(t, res.Containers, "berth-job-"+strconv.FormatInt(base+1, 10))
	assert.Contains(t, res.Networks, "berth-job-"+strconv.FormatInt(base, 10))
	assert.NoDirExists(t, JobDir(&s, &Job{ID: base}))
	assert.DirExists(t, JobDir(&s, &Job{ID: base + 1}))
	_, err = c.ContainerInspect(ctx, "berth-job-"+strconv.FormatInt(base+1, 10))
	assert.NoError(t, err, "a running job is kept")

	res, err = sw.Sweep(ctx, SweepOptions{Project: project, OlderThan: time.Nanosecond})
	require.NoError(t, err)
	assert.Contains(t, res.Containers, "berth-job-"+strconv.FormatInt(base+1, 10), "--older-than overrides the deadline")
}

// What root wrote in the builds dir, from a container, is removed through
// a container: the runner's user may not be allowed to.
func TestClearAsRootEmptiesTheBuildsDir(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	e, _ := testExecutor(t, c, testJob(time.Now().UnixNano()%1e9, "busybox:local"))
	defer func() { _ = e.Cleanup(ctx) }()
	require.NoError(t, e.Prepare(ctx))
	dir := JobDir(e.Settings, e.Job)
	code, err := e.execWait(ctx, ContainerName(e.Job), []string{"sh", "-c", "mkdir -p " + dir + "/p/.hidden/d && touch " + dir + "/p/.hidden/d/f " + dir + "/.dot && chmod -R 0500 " + dir + "/p"})
	require.NoError(t, err)
	require.Zero(t, code)
	require.NoError(t, e.clearAsRoot(ctx, dir), "through the helper")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries)

	// without a helper: a one-off container of the helper image
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "q"), 0o755))
	require.NoError(t, c.ContainerRemove(ctx, HelperName(e.Job), container.RemoveOptions{Force: true}))
	require.NoError(t, e.clearAsRoot(ctx, dir))
	entries, err = os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries)
}

// A native stage's helper has no job container to join: it is on the
// shared helpers network, which no job's cleanup removes, and where one
// job's helper cannot reach another's.
func TestNativeHelpersShareANetworkButCannotReachEachOther(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	native := func(context.Context) error { return nil }
	base := time.Now().UnixNano() % 1e9
	a, _ := testExecutor(t, c, testJob(base, "busybox:local"))
	b, _ := testExecutor(t, c, testJob(base+1, "busybox:local"))
	a.Native, b.Native = native, native
	// no spare namespaces: each helper has an endpoint on berth-helpers
	// (spares_test.go has the spares)
	a.Settings.Job.HelperSpares, b.Settings.Job.HelperSpares = 0, 0
	defer func() { _, _ = a.Cleanup(ctx), b.Cleanup(ctx) }()
	require.NoError(t, a.Prepare(ctx))
	require.NoError(t, b.Prepare(ctx))

	nw, err := c.NetworkInspect(ctx, HelpersNetwork, network.InspectOptions{})
	require.NoError(t, err)
	assert.Equal(t, "false", nw.Options["com.docker.network.bridge.enable_icc"])
	ins, err := c.ContainerInspect(ctx, HelperName(b.Job))
	require.NoError(t, err)
	require.Contains(t, ins.NetworkSettings.Networks, HelpersNetwork)
	ip, gw := ins.NetworkSettings.Networks[HelpersNetwork].IPAddress, ins.NetworkSettings.Networks[HelpersNetwork].Gateway
	code, err := a.execWait(ctx, HelperName(a.Job), []string{"sh", "-c", "ping -c 1 -W 1 " + gw})
	require.NoError(t, err)
	require.Zero(t, code, "the helper reaches its gateway (GitLab's way out)")
	code, err = a.execWait(ctx, HelperName(a.Job), []string{"sh", "-c", "ping -c 1 -W 1 " + ip})
	require.NoError(t, err)
	assert.NotZero(t, code, "helper a reached helper b at %s", ip)

	require.NoError(t, a.Cleanup(ctx))
	_, err = c.NetworkInspect(ctx, HelpersNetwork, network.InspectOptions{})
	assert.NoError(t, err, "the shared network stays")
	nc, nn := jobLeftovers(t, c, a)
	assert.Zero(t, nc)
	assert.Zero(t, nn)
}
