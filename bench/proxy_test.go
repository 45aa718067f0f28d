package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers"
	"github.com/berthci/berth/stages/containers/proxy"
)

// The proxy of issue 13 against the anchor and `docker rm -f` + `docker
// run`, on the same engine and port: a switch and a broken release under
// load, and what the hop through Caddy costs.

// benchProxy is the bench's own proxy, of the rig's caddy:local.
var benchProxy = settings.Proxy{Image: "caddy:local", Name: "bench-proxy", Network: "bench-proxy", HTTPPort: 18280, HTTPSPort: 18643, HostIP: "127.0.0.1", Manage: true}

// proxyDriver is webDriver behind the bench's proxy.
func proxyDriver(b *testing.B, c *client.Client, name string) *containers.Driver {
	d := webDriver(b, c, name)
	d.Spec.PortsOn, d.Spec.Replicas, d.Spec.DrainTimeout, d.Spec.TLS = settings.PortsOnProxy, 1, settings.Duration(30*time.Second), settings.TLSACME
	d.ProxySpec = benchProxy
	return d
}

// loadGen sends GETs to url from n clients, each on a keep-alive
// connection of its own, and counts what failed and the longest wait of a
// client between two answers.
type loadGen struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	longest    time.Duration
	lat        []time.Duration
	seen       sync.Map
}

func startLoadGen(url string, n int) *loadGen { return startLoadGenOf(url, n, false) }

// startLoadGenOf is startLoadGen; with fresh, each request on a new
// connection, as browsers often open them.
func startLoadGenOf(url string, n int, fresh bool) *loadGen {
	l := &loadGen{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableKeepAlives: fresh}}
			last := time.Now()
			var lat []time.Duration
			var longest time.Duration
			defer func() {
				l.mu.Lock()
				l.lat = append(l.lat, lat...)
				if longest > l.longest {
					l.longest = longest
				}
				l.mu.Unlock()
			}()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				t := time.Now()
				resp, err := c.Get(url)
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						now := time.Now()
						lat = append(lat, now.Sub(t))
						if gap := now.Sub(last); gap > longest {
							longest = gap
						}
						last = now
						l.ok.Add(1)
						l.seen.Store(strings.TrimSpace(string(body)), true)
						continue
					}
				}
				l.failed.Add(1)
				time.Sleep(time.Millisecond) // a refused connection returns at once
			}
		}()
	}
	return l
}

// until keeps the load on until min requests were answered or failed, and
// want was served; it returns failed, the longest gap and the requests.
func (l *loadGen) until(b *testing.B, min int64, want string) (int64, time.Duration, int64) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		_, served := l.seen.Load(want)
		if l.ok.Load()+l.failed.Load() >= min && (want == "" || served) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(l.stop)
	l.wg.Wait()
	return l.failed.Load(), l.longest, l.ok.Load() + l.failed.Load()
}

func (l *loadGen) percentile(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lat) == 0 {
		return 0
	}
	sort.Slice(l.lat, func(i, k int) bool { return l.lat[i] < l.lat[k] })
	return l.lat[int(float64(len(l.lat)-1)*p)]
}

// BenchmarkProxyOutage: one deploy under 10 clients, 10,000 requests at
// least: failed requests and the longest wait of a client; "proxy-fresh"
// with a new connection for every request. "floor" is the
// same load through the same proxy while the engine only starts and
// removes one container beside it, the least engine work a deploy does: on
// 2 busy cores that alone makes clients wait.
func BenchmarkProxyOutage(b *testing.B) {
	c := engine(b)
	refs := versions(b, 2)
	ctx := context.Background()
	// act does the i-th deploy and returns the body the new version answers
	measureOf := func(b *testing.B, fresh bool, act func(i int) string) {
		var failed, gaps, reqs []float64
		for i := 0; i < b.N; i++ {
			l := startLoadGenOf(benchURL, 10, fresh)
			time.Sleep(200 * time.Millisecond)
			want := act(i)
			f, g, n := l.until(b, 10000, want)
			failed, gaps, reqs = append(failed, float64(f)), append(gaps, float64(g.Milliseconds())), append(reqs, float64(n))
		}
		b.ReportMetric(medianOf(failed), "failed")
		b.ReportMetric(medianOf(gaps), "longest-gap-ms")
		b.ReportMetric(medianOf(reqs), "requests")
	}
	measure := func(b *testing.B, act func(i int) string) { measureOf(b, false, act) }
	deploy := func(d *containers.Driver) func(i int) string {
		return func(i int) string {
			must(b, d.Deploy(ctx, release(refs[(i+1)%2])))
			return fmt.Sprintf("app v%d", (i+1)%2)
		}
	}
	b.Run("proxy", func(b *testing.B) {
		defer clearPort(b, "bench-web", "bench-proxy")
		d := proxyDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, deploy(d))
	})
	b.Run("proxy-fresh", func(b *testing.B) {
		defer clearPort(b, "bench-web", "bench-proxy")
		d := proxyDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measureOf(b, true, deploy(d))
	})
	b.Run("floor", func(b *testing.B) {
		defer clearPort(b, "bench-web", "bench-proxy", "bench-floor")
		d := proxyDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, func(int) string {
			made, err := c.ContainerCreate(ctx, &container.Config{Image: refs[1]}, &container.HostConfig{NetworkMode: container.NetworkMode(proxy.AppNetwork(benchProxy, "bench-web"))}, nil, nil, "bench-floor")
			must(b, err)
			must(b, c.ContainerStart(ctx, made.ID, container.StartOptions{}))
			must(b, c.ContainerRemove(ctx, made.ID, container.RemoveOptions{Force: true}))
			return ""
		})
	})
	b.Run("anchor", func(b *testing.B) {
		defer clearPort(b, "bench-web")
		d := webDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, deploy(d))
	})
	b.Run("bash", func(b *testing.B) {
		defer clearPort(b, "bench-web-sh")
		run := rmRun(b)
		run(refs[0])
		waitServing(b, "app v0")
		measure(b, func(i int) string {
			run(refs[(i+1)%2])
			return fmt.Sprintf("app v%d", (i+1)%2)
		})
	})
}

func rmRun(b *testing.B) func(ref string) {
	return func(ref string) {
		sh(b, fmt.Sprintf("if [ \"$(%[1]s ps -aq --filter name=bench-web-sh)\" ]; then %[1]s rm -f bench-web-sh >/dev/null; fi; %[1]s run -d -p 127.0.0.1:%[2]s:5000 --name bench-web-sh %[3]s >/dev/null", docker, benchPort, ref))
	}
}

// BenchmarkProxyBroken: a release that never becomes healthy, deployed
// under 10 clients: the requests that failed until the old version (or,
// the script way, nothing) served again; the script way is measured over
// the anchor's health_timeout.
func BenchmarkProxyBroken(b *testing.B) {
	c := engine(b)
	refs := versions(b, 1)
	broken := brokenVersion(b)
	ctx := context.Background()
	measure := func(b *testing.B, deployBroken func()) {
		var failed []float64
		for i := 0; i < b.N; i++ {
			l := startLoadGen(benchURL, 10)
			time.Sleep(200 * time.Millisecond)
			deployBroken()
			f, _, _ := l.until(b, 0, "")
			failed = append(failed, float64(f))
		}
		b.ReportMetric(medianOf(failed), "failed")
	}
	timeout := settings.Duration(3 * time.Second)
	b.Run("proxy", func(b *testing.B) {
		defer clearPort(b, "bench-web", "bench-proxy")
		d := proxyDriver(b, c, "bench-web")
		d.Spec.HealthTimeout = timeout
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, func() { _ = d.Deploy(ctx, release(broken)) })
	})
	b.Run("anchor", func(b *testing.B) {
		defer clearPort(b, "bench-web")
		d := webDriver(b, c, "bench-web")
		d.Spec.HealthTimeout = timeout
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, func() { _ = d.Deploy(ctx, release(broken)) })
	})
	b.Run("bash", func(b *testing.B) {
		defer clearPort(b, "bench-web-sh")
		run := rmRun(b)
		measure(b, func() {
			run(refs[0])
			waitServing(b, "app v0")
			run(broken)
			time.Sleep(timeout.D())
		})
	})
}

// brokenVersion is the app listening on the wrong port: it starts, and
// never answers, as a release that cannot come up.
func brokenVersion(b *testing.B) string {
	dir := b.TempDir()
	must(b, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM web:local\nENV APP_VERSION=broken APP_ADDR=:5001\n"), 0o644))
	ref := benchRepo + ":broken"
	sh(b, fmt.Sprintf("%s build -q -t %s %s >/dev/null && %s push %s >/dev/null", docker, ref, dir, docker, ref))
	return sh(b, fmt.Sprintf("%s inspect -f '{{index .RepoDigests 0}}' %s", docker, ref))
}

// BenchmarkProxyCost: 10 keep-alive clients for 3 s, through the proxy and
// straight to the app's published port: requests per second and latency.
// Both cross docker-proxy, which serves a published port on loopback. Two
// references without it, as clients from elsewhere reach the host: the
// app at its own address ("direct-ip"), and Caddy alone on the host's
// network forwarding to that address ("caddy-host"), the least any Caddy
// in front can cost here.
func BenchmarkProxyCost(b *testing.B) {
	c := engine(b)
	refs := versions(b, 1)
	ctx := context.Background()
	measure := func(b *testing.B, url string) {
		var rps, p50, p99 []float64
		for i := 0; i < b.N; i++ {
			l := startLoadGen(url, 10)
			t := time.Now()
			time.Sleep(3 * time.Second)
			_, _, n := l.until(b, 0, "")
			rps = append(rps, float64(n)/time.Since(t).Seconds())
			p50, p99 = append(p50, ms(l.percentile(0.50))), append(p99, ms(l.percentile(0.99)))
		}
		b.ReportMetric(medianOf(rps), "req-per-s")
		b.ReportMetric(medianOf(p50), "p50-ms")
		b.ReportMetric(medianOf(p99), "p99-ms")
	}
	b.Run("proxy", func(b *testing.B) {
		defer clearPort(b, "bench-web", "bench-proxy")
		d := proxyDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, benchURL)
	})
	b.Run("direct", func(b *testing.B) {
		defer clearPort(b, "bench-web")
		d := webDriver(b, c, "bench-web")
		d.Spec.PortsOn = settings.PortsOnContainer
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, benchURL)
	})
	// the references: the app on the proxy's network, by its address
	defer clearPort(b, "bench-web", "bench-proxy", "bench-caddy-host")
	d := proxyDriver(b, c, "bench-web")
	must(b, d.Deploy(ctx, release(refs[0])))
	app, err := c.ContainerInspect(ctx, "bench-web")
	must(b, err)
	appAddr := app.NetworkSettings.Networks[proxy.AppNetwork(benchProxy, "bench-web")].IPAddress + ":5000"
	b.Run("direct-ip", func(b *testing.B) { measure(b, "http://"+appAddr+"/") })
	hostURL := hostCaddy(b, c, appAddr) // once: b.Run runs its function more than once
	b.Run("caddy-host", func(b *testing.B) { measure(b, hostURL) })
}

// hostCaddy runs the proxy's image on the host's network, forwarding
// 127.0.0.1:18290 to upstream as berth's sites do; its URL.
func hostCaddy(b *testing.B, c *client.Client, upstream string) string {
	ctx := context.Background()
	dir := b.TempDir()
	cfg := fmt.Sprintf(`{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:18290"],
	"automatic_https": {"disable": true}, "routes": [{"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": %q}],
	"load_balancing": {"selection_policy": {"policy": "round_robin"}, "try_duration": "5s", "try_interval": "100ms"}}]}]}}}}}`, upstream)
	must(b, os.WriteFile(filepath.Join(dir, "caddy.json"), []byte(cfg), 0o644))
	made, err := c.ContainerCreate(ctx, &container.Config{Image: benchProxy.Image, Cmd: []string{"caddy", "run", "--config", "/bench/caddy.json"}},
		&container.HostConfig{NetworkMode: "host", Binds: []string{dir + ":/bench:ro"}}, nil, nil, "bench-caddy-host")
	must(b, err)
	must(b, c.ContainerStart(ctx, made.ID, container.StartOptions{}))
	url := "http://127.0.0.1:18290/"
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("Caddy on the host's network never answered on %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
