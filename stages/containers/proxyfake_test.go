package containers

// The switch behind the proxy on targettest's engine and a fake Router:
// what gets traffic when, each failure undone, a killed switch put right.

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers/proxy"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
	"github.com/berthci/berth/stages/target/targettest"
)

// fakeRouter records every site applied; a backend is healthy when its
// container runs an image the engine says is healthy.
type fakeRouter struct {
	eng     *targettest.Engine
	mu      sync.Mutex
	sites   []proxy.Site
	ensured int
	fail    func(op string) error
}

func (f *fakeRouter) err(op string) error {
	if f.fail == nil {
		return nil
	}
	return f.fail(op)
}

func (f *fakeRouter) Network(context.Context) error { return f.err("network") }

func (f *fakeRouter) Ensure(context.Context, proxy.Site) error {
	f.mu.Lock()
	f.ensured++
	f.mu.Unlock()
	return f.err("ensure")
}

func (f *fakeRouter) Apply(_ context.Context, s proxy.Site) error {
	if err := f.err("apply"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sites = append(f.sites, s)
	return nil
}

func (f *fakeRouter) Switch(ctx context.Context, s proxy.Site, _ []string, _ time.Duration) (string, error) {
	if err := f.Apply(ctx, s); err != nil {
		return "", err
	}
	if err := f.err("drained"); err != nil {
		return err.Error(), nil // a drain that did not end is a warning
	}
	return "", nil
}

func (f *fakeRouter) Probe(_ context.Context, url string, _ bool, _ time.Duration) error {
	f.mu.Lock()
	ensured := f.ensured
	f.mu.Unlock()
	if ensured == 0 { // the probe runs in the proxy's ctl container
		return errors.New("no such container: the proxy's ctl")
	}
	alias := strings.TrimPrefix(url, "http://")
	alias = alias[:strings.Index(alias, ":")]
	for _, n := range f.eng.Names() {
		c, _ := f.eng.Get(n)
		if c.Config.Labels[LabelAlias] == alias {
			if c.Running && (f.eng.Healthy == nil || f.eng.Healthy(c.Config.Image)) {
				return nil
			}
			return errors.New("503 Service Unavailable")
		}
	}
	return errors.New("no such host")
}

// backends is what gets traffic now.
func (f *fakeRouter) backends() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sites) == 0 {
		return nil
	}
	return f.sites[len(f.sites)-1].Backends
}

func proxyFake(t *testing.T) (*Driver, *targettest.Engine, *fakeRouter, *bytes.Buffer) {
	d, eng, out := fakeDriver(t, settings.PortsOnAnchor)
	d.Spec.PortsOn = settings.PortsOnProxy
	d.Spec.Replicas, d.Spec.DrainTimeout = 1, settings.Duration(time.Second)
	d.Spec.HealthCmd = nil
	d.Spec.HealthURL = "http://localhost/health"
	d.ProxySpec = settings.Proxy{Name: "berth-proxy", Network: "berth-proxy"}
	_, err := eng.NetworkCreate(context.Background(), "berth-proxy", network.CreateOptions{})
	require.NoError(t, err)
	rt := &fakeRouter{eng: eng}
	d.Router = rt
	return d, eng, rt, out
}

// servingAliases are the aliases of what runs under the replicas' names.
func servingAliases(t *testing.T, eng *targettest.Engine, name string, n int) []string {
	t.Helper()
	var out []string
	for i := 1; i <= n; i++ {
		c, ok := eng.Get(replicaName(name, i))
		require.True(t, ok, "replica %d: %v", i, eng.Names())
		require.True(t, c.Running, "replica %d runs", i)
		out = append(out, c.Config.Labels[LabelAlias])
	}
	return out
}

func TestProxyFakeDeploysMoveTrafficAfterHealth(t *testing.T) {
	d, eng, rt, out := proxyFake(t)
	ctx := context.Background()
	require.NoError(t, d.Deploy(ctx, release("v1")), out.String())
	first := servingAliases(t, eng, "web", 1)
	assert.Equal(t, first, rt.backends())
	assert.Equal(t, []proxy.Port{{HostIP: "127.0.0.1", HostPort: 6000, AppPort: 5000}}, rt.sites[0].Ports)
	assert.Equal(t, 1, rt.ensured)

	require.NoError(t, d.Deploy(ctx, release("v2")), out.String())
	second := servingAliases(t, eng, "web", 1)
	assert.NotEqual(t, first, second)
	last := rt.sites[len(rt.sites)-1]
	assert.Equal(t, second, last.Backends)
	assert.Equal(t, first, last.Draining, "the old one drains before it stops")
	assert.Equal(t, "v2", serving(t, eng))
	hist, err := d.History(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Equal(t, "v2 serving", hist[0].Tag+" "+hist[0].Result)
	assert.True(t, strings.HasPrefix(hist[1].ID, "web-"), "the old one is kept, stopped: %s", hist[1].ID)
}

func TestProxyFakeReplicasOneAtATime(t *testing.T) {
	d, eng, rt, out := proxyFake(t)
	d.Spec.Replicas = 3
	ctx := context.Background()
	require.NoError(t, d.Deploy(ctx, release("v1")), out.String())
	old := servingAliases(t, eng, "web", 3)
	rt.sites = nil
	require.NoError(t, d.Deploy(ctx, release("v2")), out.String())
	nw := servingAliases(t, eng, "web", 3)
	require.Len(t, rt.sites, 3, "three switches, one per replica")
	assert.ElementsMatch(t, []string{nw[0], old[1], old[2]}, rt.sites[0].Backends)
	assert.Equal(t, []string{old[0]}, rt.sites[0].Draining)
	assert.ElementsMatch(t, []string{nw[0], nw[1], old[2]}, rt.sites[1].Backends)
	assert.ElementsMatch(t, nw, rt.sites[2].Backends)

	// down to one replica: the others go with the last switch
	d.Spec.Replicas = 1
	rt.sites = nil
	require.NoError(t, d.Deploy(ctx, release("v3")), out.String())
	require.Len(t, rt.sites, 1)
	assert.ElementsMatch(t, nw, rt.sites[0].Draining)
	_, extra := eng.Get("web-2")
	assert.False(t, extra)
}

func TestProxyFakeUnhealthyNeverGetsTraffic(t *testing.T) {
	d, eng, rt, out := proxyFake(t)
	ctx := context.Background()
	require.NoError(t, d.Deploy(ctx, release("v1")))
	before := rt.backends()
	applied := len(rt.sites)
	err := d.Deploy(ctx, release("bad"))
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "it never got a request, the previous version serves")
	assert.Len(t, rt.sites, applied, "traffic never moved")
	assert.Equal(t, before, rt.backends())
	assert.Equal(t, "v1", serving(t, eng), out.String())
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.Equal(t, driver.ResultFailed, hist[0].Result)
	assert.True(t, strings.HasSuffix(hist[0].ID, "-failed"))
	assert.Empty(t, leftovers(eng))
}

func TestProxyFakeEveryFailureIsUndone(t *testing.T) {
	for _, op := range []string{"network", "ensure", "apply", "create", "stop"} {
		t.Run(op, func(t *testing.T) {
			d, eng, rt, out := proxyFake(t)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, release("v1")))
			before := rt.backends()
			old, _ := eng.Get("web")
			failed := false
			failOnce := func(string) error {
				if failed {
					return nil
				}
				failed = true
				return errors.New("injected " + op)
			}
			switch op {
			case "create", "stop":
				method := map[string]string{"create": "ContainerCreate", "stop": "ContainerStop"}[op]
				eng.Fail = func(m, target string) error {
					if m == method && (op != "stop" || target == old.ID) {
						return failOnce(m)
					}
					return nil
				}
			default:
				rt.fail = func(o string) error {
					if o == op {
						return failOnce(o)
					}
					return nil
				}
			}
			err := d.Deploy(ctx, release("v2"))
			require.Error(t, err)
			assert.True(t, failed)
			assert.Contains(t, err.Error(), "injected")
			eng.Fail, rt.fail = nil, nil
			assert.Equal(t, "v1", serving(t, eng), out.String())
			assert.Equal(t, before, rt.backends(), "traffic is back where it was")
			assert.Empty(t, leftovers(eng))
		})
	}
}

func TestProxyFakeCancelledSwitchIsUndone(t *testing.T) {
	for _, step := range []string{"proxy", "journal", "create-1", "start-1", "route-1", "stop-old-1"} {
		t.Run(step, func(t *testing.T) {
			d, eng, rt, out := proxyFake(t)
			require.NoError(t, d.Deploy(context.Background(), release("v1")))
			before := rt.backends()
			ctx, cancel := context.WithCancel(context.Background())
			d.Pause = func(_ context.Context, at string) {
				if at == "deploy:"+step {
					cancel()
				}
			}
			err := d.Deploy(ctx, release("v2"))
			require.Error(t, err)
			assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
			assert.Equal(t, "v1", serving(t, eng), out.String())
			assert.Equal(t, before, rt.backends())
			assert.Empty(t, leftovers(eng))
		})
	}
}

func TestProxyFakeKilledSwitchIsPutRight(t *testing.T) {
	tests := []struct {
		name     string
		tookOver bool
	}{{"before the old one stopped", false}, {"after it", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, eng, rt, out := proxyFake(t)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, release("v1")))
			first := rt.backends()
			_, err := d.Lock(ctx, driver.Holder{Job: 42, Deadline: time.Now().Add(time.Hour)}, time.Second)
			require.NoError(t, err)
			// what a berth killed mid-switch leaves: the journal, a new
			// replica running, the old one running or stopped
			r := release("v2")
			led, _, err := target.ReadLedger(ctx, eng, "web", "web")
			require.NoError(t, err)
			old, _ := eng.Get("web")
			eng.AddImage(r.Image)
			made, err := eng.ContainerCreate(ctx, &container.Config{Image: r.Image, Labels: map[string]string{LabelAlias: "web-x-1"}},
				&container.HostConfig{NetworkMode: "berth-proxy"}, nil, nil, "web-new-42-1")
			require.NoError(t, err)
			require.NoError(t, eng.ContainerStart(ctx, made.ID, container.StartOptions{}))
			if tt.tookOver {
				require.NoError(t, eng.ContainerStop(ctx, old.ID, container.StopOptions{}))
			}
			led.Switch = &target.Switch{Kind: "proxy-deploy", Job: 42, Since: time.Now(), Entry: driver.EntryOf(r, "", driver.ResultServing),
				FromIDs: []string{old.ID}, ToIDs: []string{made.ID}}
			require.NoError(t, target.WriteLedger(ctx, eng, led))

			d2, _, _ := fakeDriverOn(eng, out)
			d2.Spec, d2.ProxySpec, d2.Router, d2.AnchorBinary = d.Spec, d.ProxySpec, rt, d.AnchorBinary
			require.NoError(t, d2.Recover(ctx, 42))
			assert.Contains(t, out.String(), "did not finish: putting it right first")
			_, locked := eng.Get(driver.LockName("web"))
			assert.False(t, locked)
			web, _ := eng.Get("web")
			assert.True(t, web.Running)
			if tt.tookOver {
				assert.Equal(t, made.ID, web.ID, "the new one had taken over: it stays")
				assert.Equal(t, []string{"web-x-1"}, rt.backends())
			} else {
				assert.Equal(t, old.ID, web.ID, "the old one serves again")
				assert.Equal(t, first, rt.backends())
				hist, err := d2.History(ctx)
				require.NoError(t, err)
				assert.Equal(t, driver.ResultInterrupted, hist[0].Result)
			}
			assert.Empty(t, leftovers(eng))
		})
	}
}

func TestProxyFakeMovesFromTheAnchor(t *testing.T) {
	d, eng, rt, out := proxyFake(t)
	ctx := context.Background()
	d.Spec.PortsOn = settings.PortsOnAnchor
	d.Spec.HealthURL, d.Spec.HealthCmd = "", []string{"true"} // the runner cannot reach the fake
	require.NoError(t, d.Deploy(ctx, release("v1")))
	_, hasAnchor := eng.Get(AnchorName("web"))
	require.True(t, hasAnchor)

	// from here the health check is asked from the proxy's side, which
	// must run before the anchor lets go of the ports
	d.Spec.PortsOn = settings.PortsOnProxy
	d.Spec.HealthURL, d.Spec.HealthCmd = "http://localhost/health", nil
	require.NoError(t, d.Deploy(ctx, release("v2")), out.String())
	assert.Contains(t, out.String(), "moving to the proxy")
	_, hasAnchor = eng.Get(AnchorName("web"))
	assert.False(t, hasAnchor, "the anchor is gone")
	assert.Equal(t, servingAliases(t, eng, "web", 1), rt.backends())
	assert.Equal(t, "v2", serving(t, eng))

	// a hand-made container with its own port: adopted, moved the same way
	d2, eng2, rt2, out2 := proxyFake(t)
	d2.Spec.Ports = nil
	eng2.AddImage("app:hand")
	made, err := eng2.ContainerCreate(ctx, containerConfig("app:hand"), hostWithPort("6000"), nil, nil, "web")
	require.NoError(t, err)
	require.NoError(t, eng2.ContainerStart(ctx, made.ID, startOptions))
	require.NoError(t, d2.Deploy(ctx, release("v1")), out2.String())
	assert.Equal(t, 6000, rt2.sites[len(rt2.sites)-1].Ports[0].HostPort, "its port, taken over by the proxy")
	hist, err := d2.History(ctx)
	require.NoError(t, err)
	assert.Contains(t, hist[1].Result, "adopted")
}

func TestProxyFakeRollbackAndReleaseCommand(t *testing.T) {
	d, eng, rt, out := proxyFake(t)
	ctx := context.Background()
	d.Spec.ReleaseCommand = []string{"/app", "migrate"}
	eng.OnStart = func(c *targettest.Container) {
		if len(c.Config.Entrypoint) > 0 && c.Config.Entrypoint[0] == "/app" {
			c.Running = false
			if strings.Contains(c.Config.Image, "/v3@") {
				c.ExitCode, c.Logs = 1, "migration 0002 failed"
			}
		}
	}
	require.NoError(t, d.Deploy(ctx, release("v1")), out.String())
	require.NoError(t, d.Deploy(ctx, release("v2")), out.String())
	assert.Contains(t, out.String(), "release command done")

	err := d.Deploy(ctx, release("v3"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the release command /app migrate exited with code 1")
	assert.Contains(t, err.Error(), "migration 0002 failed")
	assert.Equal(t, "v2", serving(t, eng))

	rec, err := d.Rollback(ctx, "", "bob")
	require.NoError(t, err, out.String())
	assert.Equal(t, "v1", rec.Tag)
	assert.Equal(t, "v1", serving(t, eng))
	assert.Equal(t, servingAliases(t, eng, "web", 1), rt.backends())
	_, err = d.Rollback(ctx, "v9", "bob")
	assert.ErrorContains(t, err, "holds no v9 to roll back to")
}

func TestProxyFakeWithoutBerthsBinaryTheContainerPublishes(t *testing.T) {
	d, eng, rt, out := proxyFake(t)
	d.AnchorBinary = ""
	d.Spec.HealthURL, d.Spec.HealthCmd = "", []string{"true"}
	require.NoError(t, d.Deploy(context.Background(), release("v1")))
	assert.Contains(t, out.String(), "publishes its ports itself")
	assert.Empty(t, rt.sites)
	web, _ := eng.Get("web")
	assert.NotEmpty(t, web.Host.PortBindings)
	_, err := d.Rollback(context.Background(), "", "bob")
	assert.Error(t, err, "nothing to roll back to")
}
