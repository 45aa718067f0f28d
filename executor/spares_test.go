package executor

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// spareNamespaces lists the spares and claims on the engine.
func spareNamespaces(t *testing.T, c *client.Client) (ready, claimed []container.Summary) {
	t.Helper()
	set, err := listSpares(context.Background(), c)
	require.NoError(t, err)
	for _, s := range set.spares {
		if _, ok := set.claims[name(s.Names, s.ID)]; ok {
			claimed = append(claimed, s)
		} else if s.State == "running" {
			ready = append(ready, s)
		}
	}
	return ready, claimed
}

// freshSpares removes every spare and claim, and fills the pool anew.
func freshSpares(t *testing.T, c *client.Client, n int) *Spares {
	t.Helper()
	ctx := context.Background()
	clear := func() {
		list, _ := c.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", sparePrefix))})
		for _, x := range list {
			_ = c.ContainerRemove(ctx, x.ID, container.RemoveOptions{Force: true})
		}
	}
	clear()
	t.Cleanup(clear)
	e, _ := testExecutor(t, c, testJob(1, "busybox:local"))
	e.Settings.Job.HelperSpares = n
	log := logrus.New()
	log.SetOutput(io.Discard)
	sp := &Spares{Engine: c, Settings: e.Settings, Log: log, Version: "test", Now: time.Now}
	require.NoError(t, sp.Fill(ctx, ""))
	return sp
}

// nativeExecutor is a native stage's job, whose Refill calls are recorded.
func nativeExecutor(t *testing.T, c *client.Client, id int64, spares int) (*Executor, *[]string) {
	e, _ := testExecutor(t, c, testJob(id, "busybox:local"))
	e.Settings.Job.HelperSpares = spares
	e.Native = func(context.Context) error { return nil }
	var refills []string
	e.Refill = func(after string) { refills = append(refills, "after:"+after) }
	t.Cleanup(func() {
		_ = c.ContainerRemove(context.Background(), HelperName(e.Job), container.RemoveOptions{Force: true})
		e.Refill = nil
		_ = e.Cleanup(context.Background())
	})
	return e, &refills
}

// A native helper joins a spare network namespace of its own; the spare
// serves that job only: once its helper is gone, the spare goes too, and
// what the job's root changed in it (its /etc/hosts) never reaches the
// next job.
func TestNativeHelpersTakeASpareEach(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	sp := freshSpares(t, c, 2)
	ready, _ := spareNamespaces(t, c)
	require.Len(t, ready, 2)
	base := time.Now().UnixNano() % 1e9
	a, refillsA := nativeExecutor(t, c, base, 2)
	b, _ := nativeExecutor(t, c, base+1, 2)
	x, refillsX := nativeExecutor(t, c, base+2, 2)
	require.NoError(t, a.Prepare(ctx))
	require.NoError(t, b.Prepare(ctx))
	require.NoError(t, x.Prepare(ctx))

	netOf := func(e *Executor) string {
		ins, err := c.ContainerInspect(ctx, HelperName(e.Job))
		require.NoError(t, err)
		return string(ins.HostConfig.NetworkMode)
	}
	na, nb := netOf(a), netOf(b)
	assert.True(t, strings.HasPrefix(na, "container:"), na)
	assert.True(t, strings.HasPrefix(nb, "container:"), nb)
	assert.NotEqual(t, na, nb, "a spare each")
	assert.Equal(t, HelpersNetwork, netOf(x), "no spare left: a namespace of its own")
	assert.Empty(t, *refillsA, "a job that took a spare fills none in its way")
	assert.Equal(t, []string{"after:"}, *refillsX, "none left: more are made for the next jobs")

	// a's root poisons its namespace's DNS; a cannot reach b
	code, err := a.execWait(ctx, HelperName(a.Job), []string{"sh", "-c", "echo 203.0.113.9 gitlab.example >> /etc/hosts"})
	require.NoError(t, err)
	require.Zero(t, code)
	insB, err := c.ContainerInspect(ctx, strings.TrimPrefix(nb, "container:"))
	require.NoError(t, err)
	ipB := insB.NetworkSettings.Networks[HelpersNetwork].IPAddress
	code, err = a.execWait(ctx, HelperName(a.Job), []string{"sh", "-c", "ping -c 1 -W 1 " + ipB})
	require.NoError(t, err)
	assert.NotZero(t, code, "helper a reached helper b's namespace at %s", ipB)

	// a's cleanup stops its helper and leaves the rest to berth spares
	require.NoError(t, a.Cleanup(ctx))
	assert.Equal(t, []string{"after:" + a.Job.IDString()}, *refillsA)
	// a sweep's dry run lists a's spare once its helper stopped and its
	// claim's grace is over, and removes nothing
	spareName := func(mode string) string {
		ins, err := c.ContainerInspect(ctx, strings.TrimPrefix(mode, "container:"))
		require.NoError(t, err)
		return strings.TrimPrefix(ins.Name, "/")
	}
	require.Eventually(t, func() bool {
		ins, err := c.ContainerInspect(ctx, HelperName(a.Job))
		return err == nil && !ins.State.Running
	}, 15*time.Second, 50*time.Millisecond, "a's helper stops")
	later := func() time.Time { return time.Now().Add(2 * claimGrace) }
	res, err := (&Sweeper{Engine: c, Settings: a.Settings, Now: later}).Sweep(ctx, SweepOptions{DryRun: true})
	require.NoError(t, err)
	assert.Contains(t, res.Containers, spareName(na))
	assert.NotContains(t, res.Containers, spareName(nb), "b's helper runs")
	_, err = c.ContainerInspect(ctx, HelperName(a.Job))
	require.NoError(t, err, "a dry run removes nothing")
	require.NoError(t, sp.Fill(ctx, a.Job.IDString()))
	_, err = c.ContainerInspect(ctx, HelperName(a.Job))
	assert.Error(t, err, "the helper is removed")
	_, err = c.ContainerInspect(ctx, strings.TrimPrefix(na, "container:"))
	assert.Error(t, err, "its spare is removed")
	ready, claimed := spareNamespaces(t, c)
	assert.Len(t, ready, 2, "the pool is full again")
	assert.Len(t, claimed, 1, "b's spare stays while b runs")

	// the next job takes a fresh namespace: a's /etc/hosts is not there
	d, _ := nativeExecutor(t, c, base+3, 2)
	require.NoError(t, d.Prepare(ctx))
	code, err = d.execWait(ctx, HelperName(d.Job), []string{"sh", "-c", "! grep -q gitlab.example /etc/hosts"})
	require.NoError(t, err)
	assert.Zero(t, code, "a's DNS reached the next job")

	for _, e := range []*Executor{b, x, d} {
		require.NoError(t, e.Cleanup(ctx))
		require.NoError(t, sp.Fill(ctx, e.Job.IDString()))
		nc, _ := jobLeftovers(t, c, e)
		assert.Zero(t, nc, "job %d", e.Job.ID)
	}
	ready, claimed = spareNamespaces(t, c)
	assert.Len(t, ready, 2)
	assert.Empty(t, claimed)
}

// Jobs that prepare at once never share a spare.
func TestSparesAreTakenOnce(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	freshSpares(t, c, 1)
	base := time.Now().UnixNano() % 1e9
	var got []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := int64(0); i < 4; i++ {
		e, _ := nativeExecutor(t, c, base+i, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if id := e.takeSpare(ctx); id != "" {
				mu.Lock()
				got = append(got, id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	assert.Len(t, got, 1, "one spare, one taker")
}

// A prepare that the runner retries after a cleanup that left the killed
// helper for berth spares makes its helper again.
func TestNativePrepareAgainAfterCleanup(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	freshSpares(t, c, 2)
	e, _ := nativeExecutor(t, c, time.Now().UnixNano()%1e9, 2)
	require.NoError(t, e.Prepare(ctx))
	require.NoError(t, e.Cleanup(ctx))
	require.NoError(t, e.Prepare(ctx))
	ins, err := c.ContainerInspect(ctx, HelperName(e.Job))
	require.NoError(t, err)
	assert.True(t, ins.State.Running)
}
