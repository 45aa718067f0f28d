// Package proxy is the Caddy that berth runs in front of container
// environments on a Docker target (ports_on = "proxy"): the site each
// environment asks of it, how that becomes Caddy's JSON config, the proxy
// stack on the target (stack.go) and the commands berth's own binary runs
// beside Caddy to change it (ctl.go).
//
// Traffic moves by one config change per switch, which Caddy applies
// without dropping a connection; requests in flight to a replaced
// container are counted by Caddy until they end (a "drain" route keeps the
// container known), and only then is it stopped.
package proxy

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Site is what one environment asks of the proxy.
type Site struct {
	// Env names the site in Caddy's config: the environment's container
	// name, unique on the target.
	Env string `json:"env"`
	// Ports are published by the proxy and forwarded to AppPort of the
	// backends; a port with no HostPort only names the app's port (for
	// Hosts).
	Ports []Port `json:"ports,omitempty"`
	// Hosts are served on the proxy's HTTP and HTTPS ports by name, with
	// TLS "acme", "internal" or "off".
	Hosts []string `json:"hosts,omitempty"`
	TLS   string   `json:"tls,omitempty"`
	Email string   `json:"email,omitempty"`
	// Backends are the containers that get traffic (their aliases on the
	// proxy's network); Draining the replaced ones whose requests in
	// flight Caddy still counts.
	Backends []string `json:"backends,omitempty"`
	Draining []string `json:"draining,omitempty"`
	// Grace is how long Caddy lets requests in flight finish when its
	// config changes.
	Grace time.Duration `json:"grace,omitempty"`
}

// Port is one published port of a site.
type Port struct {
	HostIP   string `json:"host_ip,omitempty"`
	HostPort int    `json:"host_port,omitempty"`
	AppPort  int    `json:"app_port"`
}

// AppPort is the port of the app that hosts are forwarded to: the first
// port's.
func (s Site) AppPort() int {
	if len(s.Ports) == 0 {
		return 0
	}
	return s.Ports[0].AppPort
}

// Upstream is the address Caddy dials for a backend on a port.
func Upstream(backend string, port int) string { return backend + ":" + strconv.Itoa(port) }

// Names in Caddy's config that belong to berth: servers berth-ENV-PORT,
// berth-https, berth-http and berth-drain; routes and TLS policies with
// @id berth-ENV-*.
const (
	serverHTTPS = "berth-https"
	serverHTTP  = "berth-http"
	serverDrain = "berth-drain"
)

func portServer(env string, hostPort int) string { return fmt.Sprintf("berth-%s-%d", env, hostPort) }
func routeID(env, what string) string            { return "berth-" + env + "-" + what }

// Apply puts site into Caddy's config (as decoded JSON): the environment's
// servers, host routes, TLS policy and drain route are replaced; other
// environments' and the operator's own are left as they are. A site with
// no backend removes the environment.
func Apply(cfg map[string]any, site Site) error {
	apps := child(cfg, "apps")
	httpApp := child(apps, "http")
	servers := child(httpApp, "servers")
	for name := range servers {
		if strings.HasPrefix(name, "berth-"+site.Env+"-") && isPortServer(name[len("berth-"+site.Env+"-"):]) {
			delete(servers, name)
		}
	}
	for _, name := range []string{serverHTTPS, serverHTTP, serverDrain} {
		if srv, ok := servers[name].(map[string]any); ok {
			srv["routes"] = withoutID(srv["routes"], "berth-"+site.Env+"-")
			if routes, _ := srv["routes"].([]any); len(routes) == 0 {
				delete(servers, name)
			}
		}
	}
	if tls, ok := apps["tls"].(map[string]any); ok {
		if auto, ok := tls["automation"].(map[string]any); ok {
			auto["policies"] = withoutID(auto["policies"], "berth-"+site.Env+"-")
		}
	}
	if len(site.Backends) == 0 {
		return nil
	}
	if site.Grace > 0 {
		cur, _ := time.ParseDuration(fmt.Sprint(httpApp["grace_period"]))
		if site.Grace > cur {
			httpApp["grace_period"] = site.Grace.String()
		}
	}
	for _, p := range site.Ports {
		if p.HostPort == 0 {
			continue
		}
		name := portServer(site.Env, p.HostPort)
		for other, srv := range servers {
			if other != name && listensOn(srv, p.HostPort) {
				return fmt.Errorf("port %d is taken on the proxy by %s: give environment %s another port", p.HostPort, other, site.Env)
			}
		}
		servers[name] = map[string]any{
			"listen":          []any{":" + strconv.Itoa(p.HostPort)},
			"automatic_https": map[string]any{"disable": true},
			"routes":          []any{map[string]any{"handle": []any{reverseProxy(site.Backends, p.AppPort)}}},
		}
	}
	if len(site.Hosts) > 0 {
		if site.AppPort() == 0 {
			return fmt.Errorf("environment %s has hosts but no port of its app to forward them to: add it to ports (\"5000\" alone publishes nothing)", site.Env)
		}
		hosts := make([]any, len(site.Hosts))
		for i, h := range site.Hosts {
			hosts[i] = h
		}
		route := map[string]any{"@id": routeID(site.Env, "hosts"), "match": []any{map[string]any{"host": hosts}},
			"handle": []any{reverseProxy(site.Backends, site.AppPort())}, "terminal": true}
		name, port := serverHTTPS, ":443"
		if site.TLS == "off" {
			name, port = serverHTTP, ":80"
		}
		srv := child(servers, name)
		srv["listen"] = []any{port}
		srv["routes"] = append(asList(srv["routes"]), route)
		switch {
		case site.TLS == "internal":
			addPolicy(apps, map[string]any{"@id": routeID(site.Env, "tls"), "subjects": hosts, "issuers": []any{map[string]any{"module": "internal"}}})
		case site.TLS != "off" && site.Email != "":
			addPolicy(apps, map[string]any{"@id": routeID(site.Env, "tls"), "subjects": hosts, "issuers": []any{map[string]any{"module": "acme", "email": site.Email}}})
		}
	}
	if len(site.Draining) > 0 {
		srv := child(servers, serverDrain)
		srv["listen"] = []any{"localhost:0"} // never reached: it only keeps the drained known
		srv["automatic_https"] = map[string]any{"disable": true}
		srv["routes"] = append(asList(srv["routes"]), map[string]any{"@id": routeID(site.Env, "drain"),
			"handle": []any{reverseProxy(site.Draining, site.appPorts()...)}})
	}
	return nil
}

// appPorts are the app's ports the proxy forwards to, each once.
func (s Site) appPorts() []int {
	var out []int
	for _, p := range s.Ports {
		if !slices.Contains(out, p.AppPort) {
			out = append(out, p.AppPort)
		}
	}
	return out
}

// DrainAddresses are the upstreams of the draining backends, whose
// requests in flight a switch waits for.
func (s Site) DrainAddresses() []string {
	var out []string
	for _, b := range s.Draining {
		for _, p := range s.appPorts() {
			out = append(out, Upstream(b, p))
		}
	}
	return out
}

// reverseProxy forwards to the backends on ports, round robin; a backend
// that refuses a connection is retried on another for a while, so that no
// request is lost to a container that just went away.
func reverseProxy(backends []string, ports ...int) map[string]any {
	var ups []any
	for _, b := range backends {
		for _, p := range ports {
			ups = append(ups, map[string]any{"dial": Upstream(b, p)})
		}
	}
	return map[string]any{"handler": "reverse_proxy", "upstreams": ups,
		"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "round_robin"},
			"try_duration": "5s", "try_interval": "100ms"}}
}

func addPolicy(apps map[string]any, p map[string]any) {
	auto := child(child(apps, "tls"), "automation")
	auto["policies"] = append(asList(auto["policies"]), p)
}

func isPortServer(rest string) bool {
	_, err := strconv.Atoi(rest)
	return err == nil
}

func listensOn(srv any, port int) bool {
	m, _ := srv.(map[string]any)
	for _, l := range asList(m["listen"]) {
		if s, _ := l.(string); strings.HasSuffix(s, ":"+strconv.Itoa(port)) {
			return true
		}
	}
	return false
}

// child is m[key] as a map, made when missing.
func child(m map[string]any, key string) map[string]any {
	c, ok := m[key].(map[string]any)
	if !ok {
		c = map[string]any{}
		m[key] = c
	}
	return c
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// withoutID drops the items whose @id starts with prefix.
func withoutID(v any, prefix string) []any {
	var out []any
	for _, item := range asList(v) {
		if m, ok := item.(map[string]any); ok {
			if id, _ := m["@id"].(string); strings.HasPrefix(id, prefix) {
				continue
			}
		}
		out = append(out, item)
	}
	return out
}

// Sites lists the environments that have a site in the config, sorted.
func Sites(cfg map[string]any) []string {
	seen := map[string]bool{}
	servers, _ := child(child(cfg, "apps"), "http")["servers"].(map[string]any)
	for name, srv := range servers {
		if strings.HasPrefix(name, "berth-") {
			if i := strings.LastIndex(name, "-"); i > len("berth-") && isPortServer(name[i+1:]) {
				seen[name[len("berth-"):i]] = true
			}
		}
		m, _ := srv.(map[string]any)
		for _, r := range asList(m["routes"]) {
			rm, _ := r.(map[string]any)
			if id, _ := rm["@id"].(string); strings.HasPrefix(id, "berth-") && strings.HasSuffix(id, "-hosts") {
				seen[strings.TrimSuffix(strings.TrimPrefix(id, "berth-"), "-hosts")] = true
			}
		}
	}
	var out []string
	for e := range seen {
		out = append(out, e)
	}
	sort.Strings(out)
	return out
}

// Decode reads Caddy's config; null (no config yet) is an empty one.
func Decode(b []byte) (map[string]any, error) {
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("the proxy's config is not JSON: %w", err)
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	return cfg, nil
}
