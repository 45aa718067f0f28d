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

	"github.com/docker/docker/client"

	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers"
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

// loadGen sends GETs to benchURL from n clients, each on a keep-alive
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

func startLoadGen(n int) *loadGen {
	l := &loadGen{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
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
				resp, err := c.Get(benchURL)
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
// least: failed requests and the longest wait of a client.
func BenchmarkProxyOutage(b *testing.B) {
	c := engine(b)
	refs := versions(b, 2)
	ctx := context.Background()
	measure := func(b *testing.B, switchTo func(ref string)) {
		var failed, gaps, reqs []float64
		for i := 0; i < b.N; i++ {
			want := fmt.Sprintf("app v%d", (i+1)%2)
			l := startLoadGen(10)
			time.Sleep(200 * time.Millisecond)
			switchTo(refs[(i+1)%2])
			f, g, n := l.until(b, 10000, want)
			failed, gaps, reqs = append(failed, float64(f)), append(gaps, float64(g.Milliseconds())), append(reqs, float64(n))
		}
		b.ReportMetric(medianOf(failed), "failed")
		b.ReportMetric(medianOf(gaps), "longest-gap-ms")
		b.ReportMetric(medianOf(reqs), "requests")
	}
	b.Run("proxy", func(b *testing.B) {
		defer clearPort(b, "bench-web", "bench-proxy")
		d := proxyDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, func(ref string) { must(b, d.Deploy(ctx, release(ref))) })
	})
	b.Run("anchor", func(b *testing.B) {
		defer clearPort(b, "bench-web")
		d := webDriver(b, c, "bench-web")
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b, func(ref string) { must(b, d.Deploy(ctx, release(ref))) })
	})
	b.Run("bash", func(b *testing.B) {
		defer clearPort(b, "bench-web-sh")
		run := rmRun(b)
		run(refs[0])
		waitServing(b, "app v0")
		measure(b, run)
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
			l := startLoadGen(10)
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
func BenchmarkProxyCost(b *testing.B) {
	c := engine(b)
	refs := versions(b, 1)
	ctx := context.Background()
	measure := func(b *testing.B) {
		var rps, p50, p99 []float64
		for i := 0; i < b.N; i++ {
			l := startLoadGen(10)
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
		measure(b)
	})
	b.Run("direct", func(b *testing.B) {
		defer clearPort(b, "bench-web")
		d := webDriver(b, c, "bench-web")
		d.Spec.PortsOn = settings.PortsOnContainer
		must(b, d.Deploy(ctx, release(refs[0])))
		measure(b)
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
