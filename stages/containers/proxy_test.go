package containers

// The container driver behind the proxy, against the rig's engine,
// registry and caddy:local (.ci/rig.sh up): traffic runs through Caddy
// during every switch, and not one request may fail.

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers/proxy"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
)

// proxySpec is a proxy of the test's own, on ports of its own.
func proxySpec(t *testing.T, c *client.Client, httpPort, httpsPort int) settings.Proxy {
	name := unique("berth-test-proxy-")
	spec := settings.Proxy{Image: "caddy:local", Name: name, Network: name, HTTPPort: httpPort, HTTPSPort: httpsPort, HostIP: "127.0.0.1", Manage: true}
	t.Cleanup(func() {
		ctx := context.Background()
		for _, n := range []string{name + "-ctl", name} {
			_ = c.ContainerRemove(ctx, n, container.RemoveOptions{Force: true})
		}
		_ = c.NetworkRemove(ctx, name)
		// the environments' networks, once their apps are gone (removeEnv)
		if list, err := c.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", proxy.LabelProxy+"="+name))}); err == nil {
			for _, n := range list {
				_ = c.NetworkRemove(ctx, n.ID)
			}
		}
		for _, v := range []string{name + "-config", name + "-data"} {
			_ = c.VolumeRemove(ctx, v, true)
		}
	})
	return spec
}

// proxiedDriver is an environment on port behind px.
func proxiedDriver(t *testing.T, c *client.Client, px settings.Proxy, port int) (*Driver, *bytes.Buffer) {
	name := unique("berth-test-px-")
	var out bytes.Buffer
	spec := settings.ContainerSpec{Name: name, Ports: []string{fmt.Sprintf("127.0.0.1:%d:5000", port)}, PortsOn: settings.PortsOnProxy,
		HealthURL: "http://localhost/health", HealthTimeout: settings.Duration(10 * time.Second), StopTimeout: settings.Duration(2 * time.Second),
		Keep: 2, Replicas: 1, TLS: settings.TLSACME, DrainTimeout: settings.Duration(30 * time.Second)}
	d := &Driver{Env: name, Spec: spec, Engine: c, Creds: &target.Credentials{}, Out: &out, AnchorBinary: berthBinary(t), ProxySpec: px}
	t.Cleanup(func() { removeEnv(c, d) })
	return d, &out
}

// load sends requests to url from n clients until stopped, counting what
// failed; each client opens a new connection now and then, as browsers do.
type load struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	errs       []string
	seen       sync.Map // bodies
}

func startLoad(url string, n int) *load { return startLoadOf(url, n, false) }

// startLoadOf is startLoad; with fresh, every request on a new connection.
func startLoadOf(url string, n int, fresh bool) *load {
	l := &load{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableKeepAlives: fresh}}
			for k := 0; ; k++ {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						l.ok.Add(1)
						l.seen.Store(strings.TrimSpace(string(b)), true)
						continue
					}
					err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
				}
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.errs) < 5 {
					l.errs = append(l.errs, err.Error())
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

func (l *load) saw(body string) bool {
	_, ok := l.seen.Load(body)
	return ok
}

func TestProxyDeploysUnderTrafficLoseNoRequest(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18080, 18443)
	d, out := proxiedDriver(t, c, px, 16020)
	url := "http://127.0.0.1:16020/"

	v1 := appImage(t, c, repo, "latest", "v1", true)
	require.NoError(t, d.Deploy(ctx, v1), out.String())
	assert.Equal(t, "app v1", get(t, url))

	l := startLoad(url, 10)
	time.Sleep(300 * time.Millisecond)
	v2 := appImage(t, c, repo, "latest", "v2", true)
	require.NoError(t, d.Deploy(ctx, v2), out.String())
	time.Sleep(300 * time.Millisecond)
	l.end()
	assert.Zero(t, l.failed.Load(), "failed requests during the switch: %v", l.errs)
	assert.Greater(t, l.ok.Load(), int64(100))
	assert.True(t, l.saw("app v1") && l.saw("app v2"), "traffic before and after the switch")
	assert.Equal(t, "app v2", get(t, url))

	web, err := c.ContainerInspect(ctx, d.Spec.Name)
	require.NoError(t, err)
	assert.Equal(t, v2.Image, web.Config.Image)
	assert.Empty(t, web.HostConfig.PortBindings, "the proxy publishes, not the app")
	assert.Contains(t, web.NetworkSettings.Networks, proxy.AppNetwork(px, d.Spec.Name))

	// a broken release under traffic: never gets a request; the job fails
	// with its logs
	l = startLoad(url, 10)
	bad := appImage(t, c, repo, "latest", "bad", false)
	err = d.Deploy(ctx, bad)
	l.end()
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "did not become healthy")
	assert.Contains(t, err.Error(), "it never got a request")
	assert.Contains(t, err.Error(), "app bad listening on :5000", "its logs")
	assert.Zero(t, l.failed.Load(), "failed requests while the broken release started: %v", l.errs)
	assert.False(t, l.saw("app bad"))
	assert.Equal(t, "app v2", get(t, url))

	// rollback is the same switch in reverse
	l = startLoad(url, 10)
	rec, err := d.Rollback(ctx, "", "tester")
	l.end()
	require.NoError(t, err, out.String())
	assert.Equal(t, v1.Digest, rec.Digest)
	assert.Zero(t, l.failed.Load(), "failed requests during the rollback: %v", l.errs)
	assert.Equal(t, "app v1", get(t, url))
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.Equal(t, driver.ResultServing, hist[0].Result)
}

func TestProxyWaitsForASlowRequest(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18081, 18444)
	d, out := proxiedDriver(t, c, px, 16021)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v1", true)), out.String())

	slow := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://127.0.0.1:16021/slow?ms=3000")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- resp.Status + " " + strings.TrimSpace(string(b))
	}()
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v2", true)), out.String())
	assert.Equal(t, "200 OK app v1", <-slow, "the request begun before the switch ends on the old version")
	assert.GreaterOrEqual(t, time.Since(t0), 2*time.Second, "the old version stopped only after it")
	assert.Equal(t, "app v2", get(t, "http://127.0.0.1:16021/"))
}

func TestProxyReplicasOneAtATime(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18082, 18445)
	d, out := proxiedDriver(t, c, px, 16022)
	d.Spec.Replicas = 3
	url := "http://127.0.0.1:16022/"
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v1", true)), out.String())
	for i := 1; i <= 3; i++ {
		r, err := c.ContainerInspect(ctx, replicaName(d.Spec.Name, i))
		require.NoError(t, err, "replica %d", i)
		assert.True(t, r.State.Running)
	}
	out.Reset()
	l := startLoad(url, 10)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v2", true)), out.String())
	l.end()
	assert.Zero(t, l.failed.Load(), "%v", l.errs)
	log := out.String()
	for i := 1; i <= 3; i++ {
		assert.Contains(t, log, fmt.Sprintf("takes traffic (%d of 3)", i))
	}
	// one at a time: each new replica healthy before the next one starts
	assert.Less(t, strings.Index(log, "(1 of 3)"), strings.Index(log, "new "+replicaName(d.Spec.Name, 2)+" is healthy"))
	assert.Less(t, strings.Index(log, "(2 of 3)"), strings.Index(log, "new "+replicaName(d.Spec.Name, 3)+" is healthy"))
	list, err := c.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("name", "^/"+d.Spec.Name))})
	require.NoError(t, err)
	assert.Len(t, list, 3, "three replicas run, the old ones are stopped")
}

// Caddy opens new listeners at every config change and closes the old
// ones: the connections not accepted yet on those must reach the new ones
// (tcp_migrate_req), or a client that just connected gets a reset.
func TestProxyConfigChangesResetNoNewConnection(t *testing.T) {
	c := realEngine(t)
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil {
		t.Skip("this kernel has no tcp_migrate_req (Linux 5.14 and later): a reset at a config change is what it gets")
	}
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18087, 18449)
	d, out := proxiedDriver(t, c, px, 16027)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v1", true)), out.String())
	ctl, _, err := d.ctlImage(ctx)
	require.NoError(t, err)
	rt := d.router(ctl)
	ports, err := d.sitePorts()
	require.NoError(t, err)
	web, err := c.ContainerInspect(ctx, d.Spec.Name)
	require.NoError(t, err)
	alias := web.Config.Labels[LabelAlias]

	l := startLoadOf("http://127.0.0.1:16027/", 10, true)
	for i := 0; i < 20; i++ { // 20 config changes, as 20 switches make
		site := d.site(ports, []string{alias}, nil)
		if i%2 == 0 {
			site.Draining = []string{alias}
		}
		require.NoError(t, rt.Apply(ctx, site))
	}
	l.end()
	assert.Zero(t, l.failed.Load(), "%v", l.errs)
	assert.Greater(t, l.ok.Load(), int64(200))
}

func TestProxyServesTwoEnvironmentsByHostname(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18083, 18446)
	a, outA := proxiedDriver(t, c, px, 0)
	b, outB := proxiedDriver(t, c, px, 0)
	for _, d := range []*Driver{a, b} {
		d.Spec.Ports = []string{"5000"} // the app's port, published by nothing but the hosts
		d.Spec.TLS = settings.TLSInternal
	}
	a.Spec.Hosts, b.Spec.Hosts = []string{"a.berth.test"}, []string{"b.berth.test"}
	require.NoError(t, a.Deploy(ctx, appImage(t, c, repo, "a", "A", true)), outA.String())
	require.NoError(t, b.Deploy(ctx, appImage(t, c, repo, "b", "B", true)), outB.String())

	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // Caddy's internal CA
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	getHost := func(scheme, host, path string, port int) (int, string, http.Header) {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, port, path), nil)
		require.NoError(t, err)
		req.Host = host
		tr.TLSClientConfig.ServerName = host
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body)), resp.Header
	}
	code, body, _ := getHost("https", "a.berth.test", "/", 18446)
	assert.Equal(t, 200, code)
	assert.Equal(t, "app A", body)
	code, body, _ = getHost("https", "b.berth.test", "/", 18446)
	assert.Equal(t, 200, code)
	assert.Equal(t, "app B", body)
	_, body, _ = getHost("https", "a.berth.test", "/client", 18446)
	assert.Contains(t, body, "proto=https", "the app sees the client's scheme")
	assert.Regexp(t, `for=\S+`, body, "and its address")
	code, _, h := getHost("http", "a.berth.test", "/", 18083)
	assert.Equal(t, http.StatusPermanentRedirect, code, "HTTP goes to HTTPS")
	assert.True(t, strings.HasPrefix(h.Get("Location"), "https://a.berth.test"), h.Get("Location"))

	// a's release is code of whoever pushes to a: from a's network it
	// reaches a, never b
	addr := func(d *Driver) string {
		ins, err := c.ContainerInspect(ctx, d.Spec.Name)
		require.NoError(t, err)
		return ins.NetworkSettings.Networks[proxy.AppNetwork(px, d.Spec.Name)].IPAddress
	}
	onA := proxy.AppNetwork(px, a.Spec.Name)
	assert.Equal(t, 0, getFrom(t, c, onA, addr(a), "5000"), "a reaches itself")
	assert.NotEqual(t, 0, getFrom(t, c, onA, addr(b), "5000"), "a reached b at %s", addr(b))
}

// getFrom asks host:port for / from a busybox container on network net:
// 0 when it answered 200. (The rig's static busybox has nc; its wget
// crashes.)
func getFrom(t *testing.T, c *client.Client, net, host, port string) int {
	t.Helper()
	ctx := context.Background()
	get := `printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$0" "$1" | grep -q '^HTTP/1.. 200'`
	made, err := c.ContainerCreate(ctx, &container.Config{Image: "busybox:local", Cmd: []string{"sh", "-c", get, host, port}},
		&container.HostConfig{NetworkMode: container.NetworkMode(net)}, nil, nil, "")
	require.NoError(t, err)
	defer func() { _ = c.ContainerRemove(ctx, made.ID, container.RemoveOptions{Force: true}) }()
	waitC, errC := c.ContainerWait(ctx, made.ID, container.WaitConditionNextExit)
	require.NoError(t, c.ContainerStart(ctx, made.ID, container.StartOptions{}))
	select {
	case w := <-waitC:
		return int(w.StatusCode)
	case err := <-errC:
		require.NoError(t, err)
	}
	return -1
}

func TestProxyReleaseCommand(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18084, 18447)
	d, out := proxiedDriver(t, c, px, 16024)
	d.Spec.ReleaseCommand = []string{"/app", "migrate"}
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v1", true)), out.String())
	assert.Contains(t, out.String(), "release command /app migrate")
	assert.Contains(t, out.String(), "release command done in")

	// a release command that fails stops the deploy with its output, the
	// old version serving
	d.Spec.Env = []string{"APP_MIGRATE=fail"}
	err := d.Deploy(ctx, appImage(t, c, repo, "latest", "v2", true))
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "the release command /app migrate exited with code 1")
	assert.Contains(t, err.Error(), "migration 0002_add_orders failed")
	assert.Equal(t, "app v1", get(t, "http://127.0.0.1:16024/"))
	left, err := c.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", d.Spec.Name+"-release-"))})
	require.NoError(t, err)
	assert.Empty(t, left, "no one-off container is left")
}

// An environment that served from its anchor moves to the proxy: the new
// version's health is asked from the proxy's side before the anchor lets
// go of the port, and the proxy then publishes it.
func TestProxyTakesOverFromTheAnchor(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18085, 18445)
	d, out := proxiedDriver(t, c, px, 16025)
	url := "http://127.0.0.1:16025/"

	d.Spec.PortsOn = settings.PortsOnAnchor
	d.Spec.HealthURL = url + "health" // the anchor's check goes through the published port
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v1", true)), out.String())
	assert.Equal(t, "app v1", get(t, url))

	d.Spec.PortsOn = settings.PortsOnProxy
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v2", true)), out.String())
	assert.Equal(t, "app v2", get(t, url))
	_, err := c.ContainerInspect(ctx, AnchorName(d.Spec.Name))
	assert.True(t, client.IsErrNotFound(err), "the anchor is gone")

	// and on from there, as any proxied environment
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v3", true)), out.String())
	assert.Equal(t, "app v3", get(t, url))
}

// A switch behind the proxy killed at its route step, and then NAME-ctl
// stopped (dockerd, restarting, starts the proxy and NAME-ctl at once,
// and NAME-ctl fails when it comes first): the next deploy starts NAME-ctl
// again, puts the killed switch right and deploys.
func TestProxyNextDeployStartsTheCtlAgain(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	repo := testRegistry + "/berth-test/" + unique("px")
	px := proxySpec(t, c, 18086, 18448)
	d, out := proxiedDriver(t, c, px, 16026)
	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v1", true)), out.String())

	killed := make(chan struct{})
	killer := *d
	killer.Pause = func(ctx context.Context, s string) {
		if s == "deploy:route-1" {
			close(killed)
			runtime.Goexit()
		}
	}
	rel := appImage(t, c, repo, "latest", "killed", true)
	go func() { _ = killer.Deploy(ctx, rel) }()
	<-killed
	require.NoError(t, c.ContainerStop(ctx, px.Name+"-ctl", container.StopOptions{}))

	require.NoError(t, d.Deploy(ctx, appImage(t, c, repo, "latest", "v3", true)), out.String())
	assert.Contains(t, out.String(), "did not finish: putting it right first")
	assert.Equal(t, "app v3", get(t, "http://127.0.0.1:16026/"))
	led, err := d.ledger(ctx)
	require.NoError(t, err)
	assert.Nil(t, led.Switch)
}
