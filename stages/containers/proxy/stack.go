package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/target"
)

// Roles of the proxy's containers (engine.LabelRole).
const (
	RoleProxy = "proxy"
	RoleCtl   = "proxy-ctl"
	// RoleApps is the role of an environment's own network, which its
	// replicas and the proxy share; LabelProxy names the proxy.
	RoleApps   = "proxy-apps"
	LabelProxy = "berth.proxy"
)

// AppNetwork is the network of env's replicas behind the proxy spec: one
// per environment, which the proxy joins, so that one environment's app
// cannot reach another's. An operator's own Caddy (manage = false) keeps
// one network for all: berth connects nothing to it.
func AppNetwork(spec settings.Proxy, env string) string {
	if !spec.Manage {
		return spec.Network
	}
	return spec.Network + "-" + env
}

// Engine is what the proxy stack needs of a target engine.
type Engine interface {
	target.Puller
	ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, net *network.NetworkingConfig, platform *ocispec.Platform, name string) (container.CreateResponse, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerStart(ctx context.Context, id string, opts container.StartOptions) error
	ContainerStop(ctx context.Context, id string, opts container.StopOptions) error
	ContainerRemove(ctx context.Context, id string, opts container.RemoveOptions) error
	ContainerExecCreate(ctx context.Context, id string, opts container.ExecOptions) (container.ExecCreateResponse, error)
	ContainerExecAttach(ctx context.Context, id string, opts container.ExecAttachOptions) (types.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, id string) (container.ExecInspect, error)
	NetworkInspect(ctx context.Context, id string, opts network.InspectOptions) (network.Inspect, error)
	NetworkCreate(ctx context.Context, name string, opts network.CreateOptions) (network.CreateResponse, error)
	NetworkList(ctx context.Context, opts network.ListOptions) ([]network.Summary, error)
	NetworkConnect(ctx context.Context, network, id string, cfg *network.EndpointSettings) error
	ServerVersion(ctx context.Context) (types.Version, error)
}

// Stack is the proxy on one target: its network, Caddy's container and
// NAME-ctl beside it.
type Stack struct {
	Engine Engine
	Spec   settings.Proxy
	// CtlImage is berth's own binary as an image (the container driver's
	// anchor image): NAME-ctl runs it.
	CtlImage string
	Creds    *target.Credentials
	Out      io.Writer
}

func (s *Stack) ctlName() string { return s.Spec.Name + "-ctl" }

// Ensure makes the proxy serve site's ports and hosts: the network, Caddy
// publishing them (made again, with every port it had, when one is new:
// its sites are down for about a second then), and NAME-ctl.
func (s *Stack) Ensure(ctx context.Context, site Site) error {
	if err := s.Network(ctx); err != nil {
		return err
	}
	apps := AppNetwork(s.Spec, site.Env)
	if s.Spec.Manage {
		if err := s.network(ctx, apps, map[string]string{engine.LabelRole: RoleApps, LabelProxy: s.Spec.Name}); err != nil {
			return err
		}
	}
	proxyID, changed, err := s.proxy(ctx, s.bindings(site), apps)
	if err != nil {
		return err
	}
	ctlChanged, err := s.ctl(ctx, proxyID)
	if err != nil || !changed && !ctlChanged {
		return err // both ran already: Caddy answers
	}
	_, err = s.exec(ctx, nil, []string{CtlReady, "15s"})
	return err
}

// Network makes the proxy's private network, where the apps' containers
// are made.
func (s *Stack) Network(ctx context.Context) error {
	return s.network(ctx, s.Spec.Network, map[string]string{engine.LabelRole: RoleProxy})
}

func (s *Stack) network(ctx context.Context, name string, labels map[string]string) error {
	_, err := s.Engine.NetworkInspect(ctx, name, network.InspectOptions{})
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) {
		return failure.Systemf("inspect the proxy's network %s: %w", name, err)
	}
	_, err = s.Engine.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Labels: labels})
	if err != nil && !errdefs.IsConflict(err) {
		return failure.Systemf("create the proxy's network %s: %w", name, err)
	}
	return nil
}

// join connects the proxy to the environments' networks it is not on:
// apps, and when it was just made, every one of its environments.
func (s *Stack) join(ctx context.Context, id string, on map[string]*network.EndpointSettings, apps string, all bool) error {
	want := []string{apps}
	if all {
		nets, err := s.Engine.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(
			filters.Arg("label", engine.LabelRole+"="+RoleApps), filters.Arg("label", LabelProxy+"="+s.Spec.Name))})
		if err != nil {
			return failure.Systemf("list the networks of the proxy %s's environments: %w", s.Spec.Name, err)
		}
		for _, n := range nets {
			want = append(want, n.Name)
		}
	}
	for _, n := range want {
		if _, ok := on[n]; ok {
			continue
		}
		if err := s.Engine.NetworkConnect(ctx, n, id, &network.EndpointSettings{}); err != nil && !errdefs.IsForbidden(err) {
			return failure.Systemf("connect the proxy %s to network %s: %w", s.Spec.Name, n, err)
		}
		on[n] = &network.EndpointSettings{}
	}
	return nil
}

// bindings are the host ports the proxy must publish for site.
func (s *Stack) bindings(site Site) nat.PortMap {
	m := nat.PortMap{}
	for _, p := range site.Ports {
		if p.HostPort != 0 {
			m[nat.Port(strconv.Itoa(p.HostPort)+"/tcp")] = []nat.PortBinding{{HostIP: p.HostIP, HostPort: strconv.Itoa(p.HostPort)}}
		}
	}
	if len(site.Hosts) > 0 {
		m["80/tcp"] = []nat.PortBinding{{HostIP: s.Spec.HostIP, HostPort: strconv.Itoa(s.Spec.HTTPPort)}}
		m["443/tcp"] = []nat.PortBinding{{HostIP: s.Spec.HostIP, HostPort: strconv.Itoa(s.Spec.HTTPSPort)}}
	}
	return m
}

// proxy makes Caddy's container publish want, be on the network apps,
// and run; its id, and whether it had to be started or made.
func (s *Stack) proxy(ctx context.Context, want nat.PortMap, apps string) (string, bool, error) {
	name := s.Spec.Name
	cur, err := s.Engine.ContainerInspect(ctx, name)
	exists := err == nil
	if err != nil && !errdefs.IsNotFound(err) {
		return "", false, failure.Systemf("inspect the proxy %s: %w", name, err)
	}
	var missing []string
	have := nat.PortMap{}
	if exists && cur.HostConfig != nil {
		have = cur.HostConfig.PortBindings
	}
	for p, b := range want {
		if !samePublished(have[p], b) {
			missing = append(missing, b[0].HostPort)
		}
	}
	sort.Strings(missing)
	if !s.Spec.Manage {
		switch {
		case !exists:
			return "", false, failure.Systemf("the proxy %s does not exist: start your Caddy container as %s on network %s, or set [proxy] manage = true", name, name, s.Spec.Network)
		case len(missing) > 0:
			return "", false, failure.Systemf("the proxy %s does not publish port(s) %s, and berth does not manage it ([proxy] manage = false): publish them on it", name, strings.Join(missing, ", "))
		case !cur.State.Running:
			return "", false, failure.Systemf("the proxy %s does not run: start it", name)
		}
		return cur.ID, false, nil
	}
	var had map[string]string
	if exists && cur.HostConfig != nil {
		had = cur.HostConfig.Sysctls
	}
	sysctls, err := s.sysctls(ctx, had)
	if err != nil {
		return "", false, err
	}
	stale := exists && sysctls[migrateReq] != had[migrateReq] // made by an earlier berth
	if exists && len(missing) == 0 && !stale {
		if cur.NetworkSettings != nil {
			if err := s.join(ctx, cur.ID, cur.NetworkSettings.Networks, apps, false); err != nil {
				return "", false, err
			}
		}
		if cur.State.Running {
			return cur.ID, false, nil
		}
		if err := s.Engine.ContainerStart(ctx, cur.ID, container.StartOptions{}); err != nil {
			return "", false, failure.Systemf("start the proxy %s: %w", name, err)
		}
		return cur.ID, true, nil
	}
	all := nat.PortMap{}
	for p, b := range have {
		all[p] = b
	}
	for p, b := range want {
		all[p] = b
	}
	if err := target.PullOnTarget(ctx, s.Engine, s.Creds, s.Out, s.Spec.Image); err != nil {
		return "", false, err
	}
	if exists {
		if len(missing) > 0 {
			joblog.Step(s.Out, "proxy %s: made again to publish %s too (its sites pause for about a second)", name, strings.Join(missing, ", "))
		} else {
			joblog.Step(s.Out, "proxy %s: made again, once, so that its config changes reset no new connection (its sites pause for about a second)", name)
		}
		if err := s.Engine.ContainerRemove(ctx, cur.ID, container.RemoveOptions{Force: true}); err != nil {
			return "", false, failure.Systemf("remove the proxy %s to make it again: %w", name, err)
		}
	} else {
		joblog.Step(s.Out, "proxy %s: started from %s on network %s", name, s.Spec.Image, s.Spec.Network)
	}
	exposed := nat.PortSet{}
	for p := range all {
		exposed[p] = struct{}{}
	}
	made, err := s.Engine.ContainerCreate(ctx, &container.Config{Image: s.Spec.Image, Cmd: []string{"caddy", "run", "--resume"},
		ExposedPorts: exposed, Labels: map[string]string{engine.LabelRole: RoleProxy}},
		&container.HostConfig{NetworkMode: container.NetworkMode(s.Spec.Network), PortBindings: all, Sysctls: sysctls,
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
			// its config (autosave.json) and certificates outlive the container
			Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: name + "-config", Target: "/config"},
				{Type: mount.TypeVolume, Source: name + "-data", Target: "/data"}}},
		nil, nil, name)
	if err != nil {
		return "", false, failure.Systemf("create the proxy %s from %s: %w (check [proxy] image)", name, s.Spec.Image, err)
	}
	if err := s.join(ctx, made.ID, map[string]*network.EndpointSettings{s.Spec.Network: nil}, apps, true); err != nil {
		_ = s.Engine.ContainerRemove(context.WithoutCancel(ctx), made.ID, container.RemoveOptions{Force: true})
		return "", false, err
	}
	if err := s.Engine.ContainerStart(ctx, made.ID, container.StartOptions{}); err != nil {
		_ = s.Engine.ContainerRemove(context.WithoutCancel(ctx), made.ID, container.RemoveOptions{Force: true})
		return "", false, failure.Buildf("start the proxy %s, which publishes %s: %v: is a port taken by something else?", name, portList(all), err)
	}
	return made.ID, true, nil
}

// migrateReq lets the kernel hand the connections a closing listener has
// not accepted yet to another listener on the same port. Caddy opens new
// listeners (SO_REUSEPORT) at every config change and closes the old
// ones: without it, the connections waiting on those are reset, and their
// clients get an error at every switch. Linux 5.14 and later.
const migrateReq = "net.ipv4.tcp_migrate_req"

// sysctls are those of Caddy's container: migrateReq where the target's
// kernel has it. A proxy that had it (had: its container's) says so, and
// the engine is not asked again at every deploy.
func (s *Stack) sysctls(ctx context.Context, had map[string]string) (map[string]string, error) {
	want := map[string]string{migrateReq: "1"}
	if had[migrateReq] == want[migrateReq] {
		return want, nil
	}
	v, err := s.Engine.ServerVersion(ctx)
	if err != nil {
		return nil, failure.Systemf("ask the target's engine for its kernel: %w", err)
	}
	if !kernelAtLeast(v.KernelVersion, 5, 14) {
		return nil, nil
	}
	return want, nil
}

// kernelAtLeast reads "6.1.0-18-amd64" and the like.
func kernelAtLeast(version string, major, minor int) bool {
	parts := strings.FieldsFunc(version, func(r rune) bool { return r < '0' || r > '9' })
	if len(parts) < 2 {
		return false
	}
	ma, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(parts[1])
	return ma > major || ma == major && mi >= minor
}

func samePublished(have, want []nat.PortBinding) bool {
	if len(have) == 0 || len(want) == 0 {
		return false
	}
	return have[0].HostPort == want[0].HostPort && have[0].HostIP == want[0].HostIP
}

func portList(m nat.PortMap) string {
	var out []string
	for _, b := range m {
		for _, x := range b {
			out = append(out, strings.TrimPrefix(x.HostIP+":", ":")+x.HostPort)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// ctl makes NAME-ctl run in the proxy's network namespace.
func (s *Stack) ctl(ctx context.Context, proxyID string) (bool, error) {
	name := s.ctlName()
	mode := container.NetworkMode("container:" + proxyID)
	cur, err := s.Engine.ContainerInspect(ctx, name)
	switch {
	case err == nil && cur.HostConfig.NetworkMode == mode && cur.Config.Image == s.CtlImage:
		if cur.State.Running {
			return false, nil
		}
		if err := s.Engine.ContainerStart(ctx, cur.ID, container.StartOptions{}); err != nil {
			return false, failure.Systemf("start %s: %w", name, err)
		}
		return true, nil
	case err == nil: // of an earlier proxy or berth
		if err := s.Engine.ContainerRemove(ctx, cur.ID, container.RemoveOptions{Force: true}); err != nil {
			return false, failure.Systemf("remove the old %s: %w", name, err)
		}
	case !errdefs.IsNotFound(err):
		return false, failure.Systemf("inspect %s: %w", name, err)
	}
	made, err := s.Engine.ContainerCreate(ctx, &container.Config{Image: s.CtlImage, Labels: map[string]string{engine.LabelRole: RoleCtl}},
		&container.HostConfig{NetworkMode: mode, RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}},
		nil, nil, name)
	if err != nil {
		return false, failure.Systemf("create %s: %w", name, err)
	}
	if err := s.Engine.ContainerStart(ctx, made.ID, container.StartOptions{}); err != nil {
		return false, failure.Systemf("start %s: %w", name, err)
	}
	return true, nil
}

// Apply puts site into the proxy's config: one change, which Caddy makes
// without dropping a connection.
func (s *Stack) Apply(ctx context.Context, site Site) error {
	_, err := s.Switch(ctx, site, nil, 0)
	return err
}

// Switch is Apply, then Drained for drain, in one call into NAME-ctl (a
// `docker exec` each costs ~70 ms). What it returns besides an error is why
// the drain did not end in time, which is only a warning: traffic moved.
func (s *Stack) Switch(ctx context.Context, site Site, drain []string, timeout time.Duration) (string, error) {
	b, err := json.Marshal(site)
	if err != nil {
		return "", err
	}
	args := []string{CtlApply}
	if len(drain) > 0 {
		args = append(append(args, timeout.String()), drain...)
	}
	out, err := s.Run(ctx, b, args...)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(out, "\n") {
		if w, ok := strings.CutPrefix(l, StillInFlight); ok {
			return w, nil
		}
	}
	return "", nil
}

// Remove takes env's site out of the proxy.
func (s *Stack) Remove(ctx context.Context, env string) error {
	_, err := s.Run(ctx, nil, CtlRemove, env)
	return err
}

// Probe waits, up to timeout, until url answers from the proxy's side.
func (s *Stack) Probe(ctx context.Context, url string, any bool, timeout time.Duration) error {
	args := []string{CtlProbe, timeout.String(), url}
	if any {
		args = append(args, "any")
	}
	_, err := s.Run(ctx, nil, args...)
	return err
}

// Run runs `berth proxy ARGS` in NAME-ctl with stdin; its output, or an
// error with what it printed. A stopped NAME-ctl is started first.
func (s *Stack) Run(ctx context.Context, stdin []byte, args ...string) (string, error) {
	out, err := s.exec(ctx, stdin, args)
	if !errdefs.IsConflict(err) { // anything but "not running"
		return out, err
	}
	if err := s.revive(ctx); err != nil {
		return "", err
	}
	return s.exec(ctx, stdin, args)
}

func (s *Stack) exec(ctx context.Context, stdin []byte, args []string) (string, error) {
	name := s.ctlName()
	ex, err := s.Engine.ContainerExecCreate(ctx, name, container.ExecOptions{Cmd: append([]string{"/berth", "proxy"}, args...),
		AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", failure.Systemf("run berth proxy %s in %s: %w", args[0], name, err)
	}
	hj, err := s.Engine.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", failure.Systemf("run berth proxy %s in %s: %w", args[0], name, err)
	}
	defer hj.Close()
	if stdin != nil {
		_, _ = hj.Conn.Write(stdin)
		_ = hj.CloseWrite()
	}
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, hj.Reader); err != nil {
		return "", failure.Systemf("berth proxy %s in %s: %w", args[0], name, err)
	}
	ins, err := s.Engine.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return "", failure.Systemf("berth proxy %s in %s: %w", args[0], name, err)
	}
	if ins.ExitCode != 0 {
		return stdout.String(), fmt.Errorf("%s", strings.TrimSpace(strings.TrimPrefix(stderr.String(), "berth: ")))
	}
	return stdout.String(), nil
}

// revive starts the proxy and NAME-ctl again when they are stopped. After
// its own restart dockerd starts both, but all at once: NAME-ctl, which
// joins the proxy's network namespace, fails when it comes first, and
// dockerd does not try it again.
func (s *Stack) revive(ctx context.Context) error {
	name := s.Spec.Name
	px, err := s.Engine.ContainerInspect(ctx, name)
	if err != nil {
		return failure.Systemf("inspect the proxy %s to start %s again: %w", name, s.ctlName(), err)
	}
	if !px.State.Running {
		if !s.Spec.Manage {
			return failure.Systemf("the proxy %s does not run: start it", name)
		}
		if err := s.Engine.ContainerStart(ctx, px.ID, container.StartOptions{}); err != nil {
			return failure.Systemf("start the proxy %s: %w", name, err)
		}
	}
	if _, err := s.ctl(ctx, px.ID); err != nil {
		return err
	}
	_, err = s.exec(ctx, nil, []string{CtlReady, "15s"})
	return err
}
