package containers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/stages"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// appImage builds web:local with a version and health of its own and
// pushes it; it returns the release to deploy.
func appImage(t *testing.T, c *client.Client, repo, tag, version string, healthy bool) driver.Release {
	t.Helper()
	ctx := context.Background()
	im, _ := testImages(c)
	df := fmt.Sprintf("FROM web:local\nENV APP_VERSION=%s APP_HEALTHY=%t\n", version, healthy)
	ref := repo + ":" + tag
	_, err := im.Build(ctx, stages.BuildOptions{Dir: sourceDir(t, map[string]string{"Dockerfile": df}), Dockerfile: "Dockerfile", Tags: []string{ref}})
	require.NoError(t, err)
	digest, err := im.Push(ctx, ref)
	require.NoError(t, err)
	return driver.Release{Env: "web", Image: repo + "@" + digest, Digest: digest, Tag: tag, Ref: "master", Pipeline: 1, Job: time.Now().UnixNano() % 1e6, By: "tester"}
}

func testDriver(t *testing.T, c *client.Client, port int) (*Driver, *bytes.Buffer) {
	name := unique("berth-test-web-")
	var out bytes.Buffer
	spec := settings.ContainerSpec{
		Name: name, Ports: []string{fmt.Sprintf("127.0.0.1:%d:5000", port)}, Env: []string{"EXTRA=1"},
		Volumes: []string{name + "-data:/data"}, HealthURL: fmt.Sprintf("http://127.0.0.1:%d/health", port),
		HealthTimeout: settings.Duration(5 * time.Second), StopTimeout: settings.Duration(2 * time.Second), Keep: 2,
	}
	d := &Driver{Env: name, Spec: spec, Engine: c, Creds: &target.Credentials{}, Out: &out, AnchorBinary: berthBinary(t)}
	t.Cleanup(func() { removeEnv(c, d) })
	return d, &out
}

func removeEnv(c *client.Client, d *Driver) {
	ctx := context.Background()
	list, _ := c.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", d.Spec.Name))})
	for _, x := range list {
		_ = c.ContainerRemove(ctx, x.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	}
	_ = c.ContainerRemove(ctx, driver.LockName(d.Spec.Name), container.RemoveOptions{Force: true})
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

func TestContainerReplacementKeepsSpecAndServesNewVersion(t *testing.T) {
	for _, tc := range []struct {
		portsOn string
		port    int
	}{{settings.PortsOnAnchor, 6000}, {settings.PortsOnContainer, 16007}} {
		t.Run(tc.portsOn, func(t *testing.T) { testReplacement(t, tc.portsOn, tc.port) })
	}
}

func testReplacement(t *testing.T, portsOn string, port int) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, _ := testDriver(t, c, port)
	d.Spec.PortsOn = portsOn
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	v1 := appImage(t, c, repo, "latest", "v1", true)
	require.NoError(t, d.Deploy(ctx, v1), "first deploy where nothing runs")
	assert.Equal(t, "app v1", get(t, url))

	v2 := appImage(t, c, repo, "latest", "v2", true)
	require.NoError(t, d.Deploy(ctx, v2))
	assert.Equal(t, "app v2", get(t, url))

	cur, err := c.ContainerInspect(ctx, d.Spec.Name)
	require.NoError(t, err)
	assert.Contains(t, cur.Config.Env, "EXTRA=1", "env kept")
	require.Len(t, cur.Mounts, 1)
	assert.Equal(t, "/data", cur.Mounts[0].Destination, "volume kept")
	published := cur
	if portsOn == settings.PortsOnAnchor {
		published, err = c.ContainerInspect(ctx, AnchorName(d.Spec.Name))
		require.NoError(t, err)
		assert.Equal(t, "container:"+published.ID, string(cur.HostConfig.NetworkMode), "joins its anchor")
		assert.Equal(t, RoleAnchor, published.Config.Labels[engine.LabelRole])
	} else {
		_, err := c.ContainerInspect(ctx, AnchorName(d.Spec.Name))
		assert.Error(t, err, "no anchor")
	}
	assert.Equal(t, "127.0.0.1", published.HostConfig.PortBindings["5000/tcp"][0].HostIP, "ports kept")
	l := cur.Config.Labels
	assert.Equal(t, v2.Digest, l[driver.LabelDigest])
	assert.Equal(t, "master", l[driver.LabelRef])
	assert.Equal(t, "1", l[driver.LabelPipeline])
	assert.NotEmpty(t, l[LabelPrevious])
	assert.Equal(t, v2.Image, cur.Config.Image, "runs by digest")

	hist, err := d.History(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Equal(t, "serving", hist[0].Result)
	assert.Equal(t, "replaced", hist[1].Result)

	// three more deploys: only keep=2 previous containers stay
	for i := 3; i <= 5; i++ {
		require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", fmt.Sprintf("v%d", i), true)))
	}
	led, err := d.ledger(ctx)
	require.NoError(t, err)
	kept, _, err := d.kept(ctx, led)
	require.NoError(t, err)
	assert.Len(t, kept, 2)
	for _, k := range kept {
		ins, err := c.ContainerInspect(ctx, k.ID)
		require.NoError(t, err)
		assert.False(t, ins.State.Running, "kept containers are stopped")
	}

	// rollback restarts the previous one, in seconds
	t0 := time.Now()
	rec, err := d.Rollback(ctx, "", "alice")
	require.NoError(t, err)
	assert.Less(t, time.Since(t0), 10*time.Second)
	assert.Equal(t, "app v4", get(t, url))
	assert.Equal(t, "serving", rec.Result)
	hist, err = d.History(ctx)
	require.NoError(t, err)
	assert.Contains(t, fmt.Sprint(hist), "rolled back by alice")

	// and --to a digest
	_, err = d.Rollback(ctx, hist[len(hist)-1].Digest, "bob")
	if err == nil {
		assert.NotEqual(t, "app v4", get(t, url))
	}
	_, err = d.Rollback(ctx, "sha256:nothing-like-this", "bob")
	assert.ErrorContains(t, err, "no kept container")
}

func TestUnhealthyDeployRestoresTheOldVersion(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, _ := testDriver(t, c, 16001)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "good", true)))

	err := d.Deploy(ctx, appImage(t, c, repo, "latest", "bad", false))
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "did not become healthy")
	assert.Contains(t, err.Error(), "previous container serves again")
	assert.Equal(t, "app good", get(t, "http://127.0.0.1:16001/"))
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.Contains(t, fmt.Sprint(hist), "failed, previous restored")
}

func TestAdoptsAContainerStartedByHand(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, _ := testDriver(t, c, 16002)
	d.Spec.Ports = nil // the hand-made container's ports carry over
	// docker run -d -p 127.0.0.1:16002:5000 --name web web:local
	cfg := &container.Config{Image: "web:local", Env: []string{"APP_VERSION=byhand"}, ExposedPorts: map[natPort]struct{}{"5000/tcp": {}}}
	host := &container.HostConfig{PortBindings: portMap("127.0.0.1", "16002", "5000/tcp")}
	created, err := c.ContainerCreate(ctx, cfg, host, nil, nil, d.Spec.Name)
	require.NoError(t, err)
	require.NoError(t, c.ContainerStart(ctx, created.ID, container.StartOptions{}))
	require.Eventually(t, func() bool { _, err := http.Get("http://127.0.0.1:16002/"); return err == nil }, 5*time.Second, 50*time.Millisecond)

	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "managed", true)))
	assert.Equal(t, "app managed", get(t, "http://127.0.0.1:16002/"))
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.Contains(t, fmt.Sprint(hist), "adopted")
}

func TestConcurrentDeploysRunOneAfterTheOther(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, out := testDriver(t, c, 16003)
	a := appImage(t, c, repo, "a", "a", true)
	b := appImage(t, c, repo, "b", "b", true)
	var mu sync.Mutex
	var spans [][2]time.Time
	var wg sync.WaitGroup
	for i, rel := range []driver.Release{a, b} {
		wg.Add(1)
		go func(i int, rel driver.Release) {
			defer wg.Done()
			rel.Job = int64(1000 + i)
			unlock, err := d.Lock(ctx, driver.Holder{Job: rel.Job, Pipeline: 9, By: "t", Deadline: time.Now().Add(time.Hour)}, time.Minute)
			if !assert.NoError(t, err) {
				return
			}
			t0 := time.Now()
			assert.NoError(t, d.Deploy(ctx, rel))
			t1 := time.Now()
			unlock()
			mu.Lock()
			spans = append(spans, [2]time.Time{t0, t1})
			mu.Unlock()
		}(i, rel)
	}
	wg.Wait()
	require.Len(t, spans, 2)
	first, second := spans[0], spans[1]
	if second[0].Before(first[0]) {
		first, second = second, first
	}
	assert.False(t, second[0].Before(first[1]), "the second deploy started only after the first ended")
	assert.Contains(t, out.String(), "berth: waiting for "+d.Env+": job 100")
	_, err := c.ContainerInspect(ctx, driver.LockName(d.Spec.Name))
	assert.Error(t, err, "no lock left behind")
}

func TestStaleLockIsTakenOver(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	d, out := testDriver(t, c, 16004)
	unlockOld, err := d.Lock(ctx, driver.Holder{Job: 1, Pipeline: 1, By: "crashed", Deadline: time.Now().Add(-time.Minute)}, time.Second)
	require.NoError(t, err)
	_ = unlockOld // the crashed job never unlocks
	unlock, err := d.Lock(ctx, driver.Holder{Job: 2, Pipeline: 2, By: "next", Deadline: time.Now().Add(time.Hour)}, 5*time.Second)
	require.NoError(t, err)
	unlock()
	assert.Contains(t, out.String(), "taking over the lock")

	unlockHeld, err := d.Lock(ctx, driver.Holder{Job: 3, Pipeline: 3, By: "busy", Deadline: time.Now().Add(time.Hour)}, time.Second)
	require.NoError(t, err)
	defer unlockHeld()
	_, err = d.Lock(ctx, driver.Holder{Job: 4, Pipeline: 4, By: "late", Deadline: time.Now().Add(time.Hour)}, time.Second)
	assert.ErrorContains(t, err, "still locked by job 3")
}

func TestHealthCommandAndEnvFile(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	im, _ := testImages(c)
	// busybox for the health command, the app as the service
	df := "FROM busybox:local\nCOPY --from=web:local /app /app\nENTRYPOINT [\"/app\"]\n"
	_, err := im.Build(ctx, stages.BuildOptions{Dir: sourceDir(t, map[string]string{"Dockerfile": df}), Dockerfile: "Dockerfile", Tags: []string{repo + ":latest"}})
	require.NoError(t, err)
	digest, err := im.Push(ctx, repo+":latest")
	require.NoError(t, err)
	envFile := sourceDir(t, map[string]string{"app.env": "# comment\nAPP_VERSION=from-env-file\n"}) + "/app.env"

	d, _ := testDriver(t, c, 16005)
	d.Spec.HealthURL = ""
	d.Spec.HealthCmd = []string{"wget", "-qO-", "http://127.0.0.1:5000/health"}
	d.Spec.EnvFile = envFile
	d.Spec.Env = nil
	rel := driver.Release{Env: d.Env, Image: repo + "@" + digest, Digest: digest, Tag: "latest", Job: 1}
	require.NoError(t, d.Deploy(ctx, rel))
	assert.Equal(t, "app from-env-file", get(t, "http://127.0.0.1:16005/"))

	d.Spec.HealthCmd = []string{"false"}
	d.Spec.HealthTimeout = settings.Duration(time.Second)
	err = d.Deploy(ctx, rel)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "[false] exited with 1")
	assert.Equal(t, "app from-env-file", get(t, "http://127.0.0.1:16005/"), "the old one serves again")
}

// The lock and the ledger are containers of berth's own empty image, which
// berth imports: they need nothing from the target, not even the release.
func TestLockNeedsNothingFromTheTarget(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	_, _ = c.ImageRemove(ctx, target.EmptyImage, image.RemoveOptions{Force: true})
	d, _ := testDriver(t, c, 16006)
	unlock, err := d.Lock(ctx, driver.Holder{Job: 7, Pipeline: 7, By: "t", Deadline: time.Now().Add(time.Hour)}, 5*time.Second)
	require.NoError(t, err)
	ins, err := c.ContainerInspect(ctx, driver.LockName(d.Spec.Name))
	require.NoError(t, err)
	assert.Equal(t, target.EmptyImage, ins.Config.Image)
	unlock()
	_, err = c.ContainerInspect(ctx, driver.LockName(d.Spec.Name))
	assert.Error(t, err, "released")
}

// A container berth did not make never counts as its lock, its ledger or
// a kept version, whatever its name and labels say.
func TestOnlyBerthsOwnRecordsCount(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, _ := testDriver(t, c, 16007)
	v1 := appImage(t, c, repo, "latest", "one", true)
	require.NoError(t, d.Deploy(ctx, v1))
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "two", true)))

	// an impostor, newer than v1, named and labelled like a kept version
	evil := appImage(t, c, repo, "evil", "evil", true)
	forged := map[string]string{driver.LabelEnv: d.Env, driver.LabelTag: "latest", driver.LabelDigest: evil.Digest, driver.LabelImage: evil.Image,
		driver.LabelDeployed: time.Now().UTC().Format(time.RFC3339)}
	made, err := c.ContainerCreate(ctx, &container.Config{Image: evil.Image, Labels: forged}, nil, nil, nil, d.Spec.Name+"-0123456789ab")
	require.NoError(t, err)
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.NotContains(t, fmt.Sprint(hist), "0123456789ab", "not in the history")
	_, err = d.Rollback(ctx, "", "alice")
	require.NoError(t, err)
	assert.Equal(t, "app one", get(t, "http://127.0.0.1:16007/"), "rolled back to what berth deployed")
	ins, err := c.ContainerInspect(ctx, made.ID)
	require.NoError(t, err)
	assert.False(t, ins.State.Running, "the impostor never ran")
	_, err = d.Rollback(ctx, evil.Digest, "alice")
	assert.ErrorContains(t, err, "no kept container")

	// a lock or ledger of someone else's is refused, not taken over
	other, _ := testDriver(t, c, 16011)
	_, err = c.ContainerCreate(ctx, &container.Config{Image: "busybox:local", Labels: map[string]string{target.LabelLockEnv: other.Env, target.LabelLockJob: "1", target.LabelLockDeadline: "2000-01-01T00:00:00Z"}}, nil, nil, nil, driver.LockName(other.Spec.Name))
	require.NoError(t, err)
	_, err = other.Lock(ctx, driver.Holder{Job: 2, Deadline: time.Now().Add(time.Hour)}, time.Second)
	assert.ErrorContains(t, err, "that berth did not make")
	_, err = c.ContainerCreate(ctx, &container.Config{Image: "busybox:local"}, nil, nil, nil, target.LedgerName(other.Spec.Name))
	require.NoError(t, err)
	_, err = other.History(ctx)
	assert.ErrorContains(t, err, "that berth did not make")
}

// Containers an earlier berth deployed, without a ledger, are taken over
// once from their labels.
func TestLedgerTakesOverLabelledContainers(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, _ := testDriver(t, c, 16012)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "one", true)))
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "two", true)))
	require.NoError(t, c.ContainerRemove(ctx, target.LedgerName(d.Spec.Name), container.RemoveOptions{Force: true}))
	d.records = nil // as a new berth process would
	hist, err := d.History(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Equal(t, "serving", hist[0].Result)
	_, err = d.Rollback(ctx, "", "alice")
	require.NoError(t, err)
	assert.Equal(t, "app one", get(t, "http://127.0.0.1:16012/"))
}

// The anchor follows berth.toml: made again on another port, put back when
// the deploy that moved it fails, and retired when the ports move onto the
// container.
func TestAnchorFollowsThePorts(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, out := testDriver(t, c, 16008)
	anchor := AnchorName(d.Spec.Name)
	onPort := func(port int) {
		d.Spec.Ports = []string{fmt.Sprintf("127.0.0.1:%d:5000", port)}
		d.Spec.HealthURL = fmt.Sprintf("http://127.0.0.1:%d/health", port)
	}
	refused := func(port int) bool {
		_, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		return err != nil
	}
	good := appImage(t, c, repo, "latest", "one", true)
	require.NoError(t, d.Deploy(ctx, good))
	first, err := c.ContainerInspect(ctx, anchor)
	require.NoError(t, err)

	onPort(16009)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "two", true)))
	assert.Equal(t, "app two", get(t, "http://127.0.0.1:16009/"))
	assert.True(t, refused(16008), "the old port is free")
	second, err := c.ContainerInspect(ctx, anchor)
	require.NoError(t, err)
	assert.NotEqual(t, first.ID, second.ID, "a new anchor")
	_, err = c.ContainerInspect(ctx, anchor+"-old")
	assert.Error(t, err, "the old anchor is gone")

	// a failed deploy that would move the port puts the anchor back
	onPort(16010)
	err = d.Deploy(ctx, appImage(t, c, repo, "latest", "bad", false))
	require.Error(t, err)
	assert.Equal(t, "app two", get(t, "http://127.0.0.1:16009/"), "back on the old port")
	assert.True(t, refused(16010))
	back, err := c.ContainerInspect(ctx, anchor)
	require.NoError(t, err)
	assert.Equal(t, second.ID, back.ID)
	assert.True(t, back.State.Running)

	// rollback to a version made in the first anchor: made again in this one
	onPort(16009)
	_, err = d.Rollback(ctx, "", "carol")
	require.NoError(t, err)
	assert.Equal(t, "app one", get(t, "http://127.0.0.1:16009/"))

	// ports onto the container: the anchor is retired
	d.Spec.PortsOn = settings.PortsOnContainer
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "three", true)))
	assert.Equal(t, "app three", get(t, "http://127.0.0.1:16009/"))
	_, err = c.ContainerInspect(ctx, anchor)
	assert.Error(t, err, "no anchor any more")
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.NotContains(t, fmt.Sprint(hist), "-net", "the anchor is not a deployment")
	assert.NotContains(t, out.String(), "publishes its ports itself")
}

func TestAnchorNeedsAStaticBinary(t *testing.T) {
	for _, tc := range []struct{ path, why string }{
		{"/bin/sh", "dynamically linked"},
		{"container_test.go", "not a Linux binary"},
	} {
		_, why, err := staticBinarySum(tc.path)
		require.NoError(t, err)
		assert.Contains(t, why, tc.why, tc.path)
	}
}

// A switch killed at a step (its goroutine ends there, as a SIGKILL ends
// berth: no undo runs) is put right by the next deploy: the journal in the
// ledger says what served.
func TestNextDeployFinishesAKilledSwitch(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("web")
	d, out := testDriver(t, c, 16013)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "one", true)))
	for _, step := range []string{"stop-old", "rename-old", "rename-new", "start-new"} {
		t.Run(step, func(t *testing.T) {
			killed := make(chan struct{})
			killer := *d
			killer.Pause = func(ctx context.Context, s string) {
				if s == "deploy:"+step {
					close(killed)
					runtime.Goexit()
				}
			}
			rel := appImage(t, c, repo, "latest", "killed-at-"+step, true)
			go func() { _ = killer.Deploy(ctx, rel) }()
			<-killed
			require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "after-"+step, true)))
			assert.Equal(t, "app after-"+step, get(t, "http://127.0.0.1:16013/"))
			assert.Contains(t, out.String(), "did not finish: putting it right first")
			led, err := d.ledger(ctx)
			require.NoError(t, err)
			assert.Nil(t, led.Switch)
			hist, err := d.History(ctx)
			require.NoError(t, err)
			assert.Contains(t, fmt.Sprint(hist), "interrupted, previous restored")
		})
	}
}

// A cancelled deploy and a cancelled rollback undo on a context of their
// own: the version that served before serves again, and the ledger has no
// unfinished switch.
func TestCancelledSwitchesAreUndone(t *testing.T) {
	c := realEngine(t)
	repo := testRegistry + "/berth-test/" + unique("web")
	d, _ := testDriver(t, c, 16014)
	require.NoError(t, d.Deploy(context.Background(), appImage(t, c, repo, "latest", "one", true)))
	require.NoError(t, d.Deploy(context.Background(), appImage(t, c, repo, "latest", "two", true)))
	for _, step := range []string{"deploy:stop-old", "deploy:start-new", "rollback:stop-current", "rollback:start-target"} {
		ctx, cancel := context.WithCancel(context.Background())
		d.Pause = func(_ context.Context, s string) {
			if s == step {
				cancel()
			}
		}
		var err error
		if strings.HasPrefix(step, "deploy") {
			err = d.Deploy(ctx, appImage(t, c, repo, "latest", "three", true))
		} else {
			_, err = d.Rollback(ctx, "", "alice")
		}
		require.Error(t, err, step)
		assert.Contains(t, err.Error(), "cancelled", step)
		assert.Equal(t, "app two", get(t, "http://127.0.0.1:16014/"), step)
		led, lerr := d.ledger(context.Background())
		require.NoError(t, lerr)
		assert.Nil(t, led.Switch, step)
	}
}

// N deploys wait on a lock whose holder is gone; they take it over one at
// a time, never two at once, round after round.
func TestConcurrentDeploysOnAStaleLock(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	d, out := testDriver(t, c, 16015)
	const rounds, n = 5, 4
	for round := 0; round < rounds; round++ {
		// a lock whose job is over: a crashed runner's
		_, err := d.Lock(ctx, driver.Holder{Job: 1, Pipeline: 1, By: "crashed", Deadline: time.Now().Add(-time.Second)}, time.Second)
		require.NoError(t, err)
		var mu sync.Mutex
		var spans [][2]time.Time
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				unlock, err := d.Lock(ctx, driver.Holder{Job: int64(100 + i), Pipeline: 2, By: "t", Deadline: time.Now().Add(time.Hour)}, time.Minute)
				if !assert.NoError(t, err) {
					return
				}
				t0 := time.Now()
				time.Sleep(100 * time.Millisecond) // the deploy
				t1 := time.Now()
				unlock()
				mu.Lock()
				spans = append(spans, [2]time.Time{t0, t1})
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		require.Len(t, spans, n)
		sort.Slice(spans, func(i, k int) bool { return spans[i][0].Before(spans[k][0]) })
		for i := 1; i < n; i++ {
			assert.False(t, spans[i][0].Before(spans[i-1][1]), "round %d: two held the lock at once", round)
		}
	}
	taken := strings.Count(out.String(), "taking over the lock")
	assert.GreaterOrEqual(t, taken, rounds, "each stale lock taken over")
	assert.LessOrEqual(t, taken, rounds*n)
}
