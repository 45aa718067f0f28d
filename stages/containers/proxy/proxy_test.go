package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/target"
	"github.com/berthci/berth/stages/target/targettest"
)

var _ Engine = (*targettest.Engine)(nil)

func decoded(t *testing.T, cfg map[string]any) string {
	t.Helper()
	b, err := json.Marshal(cfg)
	require.NoError(t, err)
	return string(b)
}

func TestApplyOwnsOnlyItsEnvironment(t *testing.T) {
	cfg, err := Decode([]byte(`{"apps":{"http":{"servers":{"operator":{"listen":[":9000"]}}}}}`))
	require.NoError(t, err)
	web := Site{Env: "web", Ports: []Port{{HostIP: "127.0.0.1", HostPort: 6000, AppPort: 5000}}, Backends: []string{"web-1-1"}, Grace: 30 * time.Second}
	shop := Site{Env: "shop", Ports: []Port{{AppPort: 8080}}, Hosts: []string{"shop.example.com"}, TLS: "internal", Backends: []string{"shop-9-1", "shop-9-2"}}
	require.NoError(t, Apply(cfg, web))
	require.NoError(t, Apply(cfg, shop))
	j := decoded(t, cfg)
	assert.Contains(t, j, `"operator"`, "the operator's own server stays")
	assert.Contains(t, j, `"berth-web-6000":{"automatic_https":{"disable":true},"listen":[":6000"]`)
	assert.Contains(t, j, `"dial":"web-1-1:5000"`)
	assert.Contains(t, j, `"dial":"shop-9-2:8080"`)
	assert.Contains(t, j, `"@id":"berth-shop-hosts"`)
	assert.Contains(t, j, `"host":["shop.example.com"]`)
	assert.Contains(t, j, `"module":"internal"`)
	assert.Contains(t, j, `"grace_period":"30s"`)
	assert.Equal(t, []string{"shop", "web"}, Sites(cfg))

	// a switch of web: the new backend serves, the old one drains
	web.Backends, web.Draining = []string{"web-2-1"}, []string{"web-1-1"}
	require.NoError(t, Apply(cfg, web))
	j = decoded(t, cfg)
	assert.Contains(t, j, `"berth-drain"`)
	assert.Contains(t, j, `"@id":"berth-web-drain"`)
	assert.Equal(t, []string{"web-1-1:5000"}, web.DrainAddresses())
	assert.Equal(t, 1, strings.Count(j, `"dial":"web-2-1:5000"`))

	// taking an environment out leaves the others
	require.NoError(t, Apply(cfg, Site{Env: "web"}))
	j = decoded(t, cfg)
	assert.NotContains(t, j, "web-2-1")
	assert.NotContains(t, j, "berth-drain", "no route left, no server")
	assert.Contains(t, j, "shop-9-1")
	assert.Equal(t, []string{"shop"}, Sites(cfg))

	require.NoError(t, Apply(cfg, Site{Env: "shop"}))
	assert.NotContains(t, decoded(t, cfg), "berth-https")
	assert.NotContains(t, decoded(t, cfg), "berth-shop-tls")
}

func TestApplyRefusals(t *testing.T) {
	cfg := map[string]any{}
	require.NoError(t, Apply(cfg, Site{Env: "a", Ports: []Port{{HostPort: 6000, AppPort: 5000}}, Backends: []string{"a"}}))
	err := Apply(cfg, Site{Env: "b", Ports: []Port{{HostPort: 6000, AppPort: 5000}}, Backends: []string{"b"}})
	assert.ErrorContains(t, err, "port 6000 is taken on the proxy by berth-a-6000")
	err = Apply(cfg, Site{Env: "c", Hosts: []string{"c.example"}, Backends: []string{"c"}})
	assert.ErrorContains(t, err, "has hosts but no port of its app")
	require.NoError(t, Apply(cfg, Site{Env: "d", Ports: []Port{{AppPort: 80}}, Hosts: []string{"d.example"}, TLS: "off", Backends: []string{"d"}}))
	assert.Contains(t, decoded(t, cfg), `"berth-http":{"listen":[":80"]`)
	require.NoError(t, Apply(cfg, Site{Env: "e", Ports: []Port{{AppPort: 80}}, Hosts: []string{"e.example"}, Email: "ops@example.com", Backends: []string{"e"}}))
	assert.Contains(t, decoded(t, cfg), `"email":"ops@example.com"`)
	_, err = Decode([]byte("{"))
	assert.Error(t, err)
	none, err := Decode([]byte("null"))
	require.NoError(t, err)
	assert.Empty(t, none)
}

// fakeCaddy is Caddy's admin API as the ctl commands use it.
type fakeCaddy struct {
	mu       sync.Mutex
	cfg      []byte
	conflict int // PATCHes answered 412 before one goes through
	inFlight map[string]int
	patches  int
}

func (f *fakeCaddy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	hash := fmt.Sprintf(`"/config/ %x"`, len(f.cfg))
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/config/":
		w.Header().Set("Trailer", "Etag")
		_, _ = w.Write(f.cfg)
		w.Header().Set("Etag", hash)
	case r.Method == http.MethodPatch && r.URL.Path == "/config/":
		if f.conflict > 0 || r.Header.Get("If-Match") != hash {
			f.conflict--
			http.Error(w, "If-Match header did not match current config hash", http.StatusPreconditionFailed)
			return
		}
		f.cfg, _ = io.ReadAll(r.Body)
		f.patches++
	case r.URL.Path == "/reverse_proxy/upstreams":
		var out []map[string]any
		for a, n := range f.inFlight {
			out = append(out, map[string]any{"address": a, "num_requests": n})
			if n > 0 {
				f.inFlight[a] = n - 1 // one ends per look
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	case r.URL.Path == "/health":
		if r.URL.Query().Get("sick") != "" {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	default:
		http.NotFound(w, r)
	}
}

func TestCtlCommands(t *testing.T) {
	caddy := &fakeCaddy{cfg: []byte("null"), conflict: 1, inFlight: map[string]int{"web-1-1:5000": 2}}
	srv := httptest.NewServer(caddy)
	defer srv.Close()
	ctx := context.Background()
	run := func(stdin string, args ...string) (string, error) {
		var out bytes.Buffer
		err := Ctl(ctx, srv.URL, args, strings.NewReader(stdin), &out)
		return out.String(), err
	}
	site, _ := json.Marshal(Site{Env: "web", Ports: []Port{{HostPort: 6000, AppPort: 5000}}, Backends: []string{"web-1-1"}})
	_, err := run(string(site), CtlApply)
	require.NoError(t, err, "a concurrent change is retried")
	assert.Equal(t, 1, caddy.patches)
	out, err := run("", CtlSites)
	require.NoError(t, err)
	assert.Equal(t, "web\n", out)
	_, err = run("", CtlDrained, "5s", "web-1-1:5000")
	require.NoError(t, err, "waits until the requests in flight end")
	_, err = run("", CtlDrained, "0s", "web-1-1:5000")
	require.NoError(t, err)
	// apply, then wait for the old backend's requests: one call of a switch
	caddy.mu.Lock()
	caddy.inFlight["web-1-2:5000"] = 3
	caddy.mu.Unlock()
	out, err = run(string(site), CtlApply, "0s", "web-1-2:5000")
	require.NoError(t, err, "requests still in flight do not undo the switch")
	assert.Regexp(t, `^`+StillInFlight+`.*request\(s\) in flight to web-1-2:5000\n$`, out)
	out, err = run(string(site), CtlApply, "5s", "web-1-2:5000")
	require.NoError(t, err)
	assert.Empty(t, out, "drained in time")
	_, err = run(string(site), CtlApply, "soon", "web-1-2:5000")
	assert.Error(t, err)
	_, err = run("", CtlProbe, "1s", srv.URL+"/health")
	require.NoError(t, err)
	_, err = run("", CtlProbe, "200ms", srv.URL+"/health?sick=1")
	assert.ErrorContains(t, err, "503")
	_, err = run("", CtlProbe, "1s", srv.URL+"/health?sick=1", "any")
	assert.ErrorContains(t, err, "503", "any means below 500")
	_, err = run("", CtlProbe, "1s", srv.URL+"/missing", "any")
	require.NoError(t, err, "a 404 is an app that answers")
	_, err = run("", CtlReady, "1s")
	require.NoError(t, err)
	_, err = run("", CtlRemove, "web")
	require.NoError(t, err)
	out, _ = run("", CtlSites)
	assert.Equal(t, "\n", out)
	for _, bad := range [][]string{{}, {"nope"}, {CtlRemove}, {CtlDrained}, {CtlProbe, "1s"}} {
		_, err := run("", bad...)
		assert.Error(t, err, "%v", bad)
	}
	_, err = run("{", CtlApply)
	assert.ErrorContains(t, err, "read the site")
	assert.Error(t, Ctl(ctx, "http://127.0.0.1:1", []string{CtlReady, "100ms"}, nil, io.Discard))
}

func stack(eng *targettest.Engine, manage bool) (*Stack, *bytes.Buffer) {
	var out bytes.Buffer
	eng.AddImage("berth-anchor:1")
	return &Stack{Engine: eng, CtlImage: "berth-anchor:1", Creds: &target.Credentials{}, Out: &out,
		Spec: settings.Proxy{Image: "caddy:local", Name: "berth-proxy", Network: "berth-proxy", HTTPPort: 80, HTTPSPort: 443, Manage: manage}}, &out
}

func TestStackEnsure(t *testing.T) {
	eng := targettest.New()
	s, out := stack(eng, true)
	ctx := context.Background()
	require.NoError(t, s.Ensure(ctx, Site{Env: "web", Ports: []Port{{HostIP: "127.0.0.1", HostPort: 6000, AppPort: 5000}}}))
	px, ok := eng.Get("berth-proxy")
	require.True(t, ok)
	assert.True(t, px.Running)
	assert.Equal(t, []string{"caddy", "run", "--resume"}, []string(px.Config.Cmd))
	assert.Equal(t, "6000", px.Host.PortBindings["6000/tcp"][0].HostPort)
	ctl, ok := eng.Get("berth-proxy-ctl")
	require.True(t, ok)
	assert.Equal(t, "container:"+px.ID, string(ctl.Host.NetworkMode))
	assert.Contains(t, out.String(), "proxy berth-proxy: started from caddy:local")
	assert.Contains(t, px.Networks, "berth-proxy-web", "the proxy joins the environment's own network")

	// the same ports again: nothing made again
	require.NoError(t, s.Ensure(ctx, Site{Env: "web", Ports: []Port{{HostIP: "127.0.0.1", HostPort: 6000, AppPort: 5000}}}))
	again, _ := eng.Get("berth-proxy")
	assert.Equal(t, px.ID, again.ID)

	// a new port: made again with every port, and its ctl with it
	require.NoError(t, s.Ensure(ctx, Site{Env: "shop", Ports: []Port{{AppPort: 8080}}, Hosts: []string{"shop.example"}}))
	re, _ := eng.Get("berth-proxy")
	assert.NotEqual(t, px.ID, re.ID)
	assert.Len(t, re.Host.PortBindings, 3, "6000, 80 and 443")
	assert.Equal(t, nat.PortBinding{HostPort: "443"}, re.Host.PortBindings["443/tcp"][0])
	ctl, _ = eng.Get("berth-proxy-ctl")
	assert.Equal(t, "container:"+re.ID, string(ctl.Host.NetworkMode))
	assert.Contains(t, out.String(), "made again to publish 443, 80 too")
	assert.Contains(t, re.Networks, "berth-proxy-web", "made again, it joins every environment's network")
	assert.Contains(t, re.Networks, "berth-proxy-shop")

	// stopped by someone: started again
	eng.Kill("berth-proxy", 0)
	require.NoError(t, s.Ensure(ctx, Site{Env: "web"}))
	re2, _ := eng.Get("berth-proxy")
	assert.True(t, re2.Running)
}

// Caddy's container gets tcp_migrate_req where the kernel has it; one made
// without it is made again, once.
func TestStackMigratesWaitingConnections(t *testing.T) {
	eng := targettest.New()
	s, out := stack(eng, true)
	ctx := context.Background()
	site := Site{Env: "web", Ports: []Port{{HostPort: 6000, AppPort: 5000}}}
	eng.Version.KernelVersion = "5.10.0-28-amd64"
	require.NoError(t, s.Ensure(ctx, site))
	old, _ := eng.Get("berth-proxy")
	assert.Empty(t, old.Host.Sysctls, "an old kernel has no such sysctl")

	eng.Version.KernelVersion = "6.1.0-18-amd64"
	require.NoError(t, s.Ensure(ctx, site))
	px, _ := eng.Get("berth-proxy")
	assert.NotEqual(t, old.ID, px.ID)
	assert.Equal(t, map[string]string{"net.ipv4.tcp_migrate_req": "1"}, px.Host.Sysctls)
	assert.Contains(t, out.String(), "made again, once, so that its config changes reset no new connection")
	// a proxy that has it settles it: the engine is not asked each deploy
	eng.Fail = func(method, _ string) error {
		if method == "ServerVersion" {
			return errors.New("asked")
		}
		return nil
	}
	require.NoError(t, s.Ensure(ctx, site))
	again, _ := eng.Get("berth-proxy")
	assert.Equal(t, px.ID, again.ID, "once")
}

func TestKernelAtLeast(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    bool
	}{
		{"6.1.0-18-amd64", true},
		{"5.14.0-362.el9.x86_64", true},
		{"5.13.19", false},
		{"5.10.0-28-amd64", false},
		{"4.19.0", false},
		{"6.18.44-fc-v1045", true},
		{"", false},
		{"weird", false},
	} {
		assert.Equal(t, tc.want, kernelAtLeast(tc.version, 5, 14), tc.version)
	}
}

func TestStackThatBerthDoesNotManage(t *testing.T) {
	eng := targettest.New()
	s, _ := stack(eng, false)
	ctx := context.Background()
	err := s.Ensure(ctx, Site{Env: "web", Ports: []Port{{HostPort: 6000, AppPort: 5000}}})
	assert.ErrorContains(t, err, "the proxy berth-proxy does not exist")
	managed, _ := stack(eng, true)
	require.NoError(t, managed.Ensure(ctx, Site{Env: "web", Ports: []Port{{HostPort: 6000, AppPort: 5000}}}))
	err = s.Ensure(ctx, Site{Env: "shop", Ports: []Port{{HostPort: 6001, AppPort: 5000}}})
	assert.ErrorContains(t, err, "does not publish port(s) 6001")
	require.NoError(t, s.Ensure(ctx, Site{Env: "web", Ports: []Port{{HostPort: 6000, AppPort: 5000}}}))
	require.NoError(t, s.Ensure(ctx, Site{Env: "blog"}))
	_, err = eng.NetworkInspect(ctx, "berth-proxy-blog", network.InspectOptions{})
	assert.Error(t, err, "an operator's proxy gets no network of berth's")
	assert.Equal(t, "berth-proxy", AppNetwork(s.Spec, "blog"), "its apps share its network")
	eng.Kill("berth-proxy", 0)
	assert.ErrorContains(t, s.Ensure(ctx, Site{Env: "web", Ports: []Port{{HostPort: 6000, AppPort: 5000}}}), "does not run")
}

func TestStackCommandsRunInCtl(t *testing.T) {
	eng := targettest.New()
	s, _ := stack(eng, true)
	ctx := context.Background()
	require.NoError(t, s.Ensure(ctx, Site{Env: "web"}))
	require.NoError(t, s.Apply(ctx, Site{Env: "web", Backends: []string{"a"}}))
	require.NoError(t, s.Remove(ctx, "web"))
	warn, err := s.Switch(ctx, Site{Env: "web", Backends: []string{"b"}, Draining: []string{"a"}}, []string{"a:5000"}, time.Second)
	require.NoError(t, err)
	assert.Empty(t, warn)
	_, err = s.Switch(ctx, Site{Env: "web", Backends: []string{"a"}}, nil, time.Second)
	require.NoError(t, err)
	require.NoError(t, s.Probe(ctx, "http://a:5000/", true, time.Second))
	eng.Healthy = func(string) bool { return false } // the ctl command fails
	assert.Error(t, s.Probe(ctx, "http://a:5000/", false, time.Second))

	// dockerd restarted and did not start the ctl again, or neither
	eng.Healthy = nil
	eng.Kill("berth-proxy-ctl", 0)
	require.NoError(t, s.Apply(ctx, Site{Env: "web"}))
	eng.Kill("berth-proxy-ctl", 0)
	eng.Kill("berth-proxy", 0)
	require.NoError(t, s.Apply(ctx, Site{Env: "web"}))
	assert.Equal(t, []string{"berth-proxy", "berth-proxy-ctl"}, eng.Running())
	// a proxy the operator runs is not started by berth
	eng.Kill("berth-proxy-ctl", 0)
	eng.Kill("berth-proxy", 0)
	s.Spec.Manage = false
	assert.ErrorContains(t, s.Apply(ctx, Site{Env: "web"}), "the proxy berth-proxy does not run: start it")
	assert.Empty(t, eng.Running())
}
