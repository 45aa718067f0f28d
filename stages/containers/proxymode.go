package containers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers/proxy"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
)

// Behind the proxy (ports_on = "proxy"), the replicas NAME, NAME-2, …
// sit on the environment's private network, which the proxy joins (and no
// other environment's app), each known to Caddy by an alias of its own; a
// switch starts a new replica beside the old ones, checks its health from
// the proxy's side, moves traffic in one config change, waits for the
// requests in flight to the old replica, and only then stops it; one
// replica at a time. docs/deploy.md tells the whole story.

// Router is the proxy as a switch uses it: a proxy.Stack on the target,
// a fake in unit tests.
type Router interface {
	Network(ctx context.Context) error
	Ensure(ctx context.Context, site proxy.Site) error
	Apply(ctx context.Context, site proxy.Site) error
	// Switch applies site, then waits up to timeout for drain's requests in
	// flight; a drain that did not end is the warning it returns.
	Switch(ctx context.Context, site proxy.Site, drain []string, timeout time.Duration) (string, error)
	Probe(ctx context.Context, url string, any bool, timeout time.Duration) error
}

// LabelAlias is a replica's name on the proxy's network.
const LabelAlias = "berth.alias"

func (d *Driver) proxied() bool { return d.Spec.PortsOn == settings.PortsOnProxy }

// replicaName is the name of replica i (from 1) once it serves.
func replicaName(name string, i int) string {
	if i == 1 {
		return name
	}
	return fmt.Sprintf("%s-%d", name, i)
}

// replica is a container that serves behind the proxy.
type replica struct {
	id, name, alias string
	running         bool
	// publishes: it holds host ports itself (a hand-made container, or one
	// of ports_on = "container"), or sits in an anchor that does.
	publishes bool
}

// sitePorts are the environment's ports as the proxy serves them.
func (d *Driver) sitePorts() ([]proxy.Port, error) {
	var out []proxy.Port
	for _, spec := range d.Spec.Ports {
		maps, err := nat.ParsePortSpec(spec)
		if err != nil {
			return nil, failure.Systemf("environments.%s.container.ports: %w", d.Env, err)
		}
		for _, m := range maps {
			if m.Port.Proto() != "tcp" {
				return nil, failure.Systemf("environments.%s.container.ports: %s is %s: the proxy forwards HTTP only; set ports_on = \"anchor\" for it", d.Env, spec, m.Port.Proto())
			}
			p := proxy.Port{HostIP: m.Binding.HostIP, AppPort: m.Port.Int()}
			if m.Binding.HostPort != "" {
				if p.HostPort, err = strconv.Atoi(m.Binding.HostPort); err != nil {
					return nil, failure.Systemf("environments.%s.container.ports: %s: a range is not served by the proxy", d.Env, spec)
				}
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// site is what the environment asks of the proxy, with these backends;
// it is named after the container, which is unique on the target where
// environment names need not be (two berth.toml with a "web" each).
func (d *Driver) site(ports []proxy.Port, backends, draining []string) proxy.Site {
	return proxy.Site{Env: d.Spec.Name, Ports: ports, Hosts: d.Spec.Hosts, TLS: d.Spec.TLS, Email: d.ProxySpec.Email,
		Backends: backends, Draining: draining, Grace: d.Spec.DrainTimeout.D()}
}

// router is the target's proxy, with berth's binary image for NAME-ctl.
func (d *Driver) router(ctlImage string) Router {
	if d.Router != nil {
		return d.Router
	}
	return &proxy.Stack{Engine: d.Engine, Spec: d.ProxySpec, CtlImage: ctlImage, Creds: d.Creds, Out: d.Out}
}

// replicas are the containers that serve now, replica 1 first: NAME,
// NAME-2, … (a kept NAME-ID12 is not one).
func (d *Driver) replicas(ctx context.Context) ([]replica, error) {
	name := d.Spec.Name
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+name))})
	if err != nil {
		return nil, failure.Systemf("list containers of %s: %w", d.Env, err)
	}
	re := regexp.MustCompile("^" + regexp.QuoteMeta(name) + "(-([0-9]{1,3}))?$")
	type indexed struct {
		i int
		r replica
	}
	var found []indexed
	for _, c := range list {
		m := re.FindStringSubmatch(containerName(c))
		if m == nil || c.Labels[engine.LabelRole] == RoleAnchor {
			continue
		}
		i := 1
		if m[2] != "" {
			i, _ = strconv.Atoi(m[2])
		}
		mode := container.NetworkMode(c.HostConfig.NetworkMode)
		found = append(found, indexed{i, replica{id: c.ID, name: containerName(c), alias: c.Labels[LabelAlias], running: c.State == "running",
			publishes: mode.IsContainer() || publishesPorts(c.Ports)}})
	}
	sort.Slice(found, func(a, b int) bool { return found[a].i < found[b].i })
	out := make([]replica, len(found))
	for k, f := range found {
		out[k] = f.r
	}
	return out, nil
}

func publishesPorts(ports []container.Port) bool {
	for _, p := range ports {
		if p.PublicPort != 0 {
			return true
		}
	}
	return false
}

func aliases(rs []replica) []string {
	var out []string
	for _, r := range rs {
		if r.alias != "" && r.running {
			out = append(out, r.alias)
		}
	}
	return out
}

// proxyDeploy is Deploy behind the proxy.
func (d *Driver) proxyDeploy(ctx context.Context, r driver.Release) error {
	ctl, plain, err := d.ctlImage(ctx)
	if err != nil || plain != nil {
		return errors.Join(err, plainDeploy(ctx, plain, r))
	}
	return d.proxySwitch(ctx, r, "deploy", driver.ResultReplaced, ctl)
}

func plainDeploy(ctx context.Context, plain *Driver, r driver.Release) error {
	if plain == nil {
		return nil
	}
	return plain.Deploy(ctx, r)
}

// ctlImage is berth's own binary as an image, for the proxy's NAME-ctl;
// when the target cannot run it, plain is this driver with the ports on
// the container instead, as the anchor falls back.
func (d *Driver) ctlImage(ctx context.Context) (ref string, plain *Driver, err error) {
	ref, why, err := d.anchorImage(ctx)
	if err != nil || why == "" {
		return ref, nil, err
	}
	joblog.Step(d.Out, "%s publishes its ports itself (%s): a switch costs about a second of outage", d.Spec.Name, why)
	p := *d
	p.Spec.PortsOn = settings.PortsOnContainer
	return "", &p, nil
}

// proxyRollback starts the chosen earlier release afresh, by the same
// switch as a deploy.
func (d *Driver) proxyRollback(ctx context.Context, to, by string) (driver.Record, error) {
	ctl, plain, err := d.ctlImage(ctx)
	if err != nil {
		return driver.Record{}, err
	}
	if plain != nil {
		return plain.Rollback(ctx, to, by)
	}
	led, err := d.ledger(ctx)
	if err != nil {
		return driver.Record{}, err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return driver.Record{}, err
	}
	serving, _ := led.Serving()
	i, ok := driver.ChooseEntry(led.Entries, serving.Image, to)
	if !ok {
		return driver.Record{}, driver.NoRollback(d.Env, to, "a previous version")
	}
	e := led.Entries[i]
	r := driver.Release{Env: d.Env, Image: e.Image, Digest: e.Digest, Tag: e.Tag, Ref: e.Ref, Sha: e.Sha, Pipeline: e.Pipeline,
		Job: e.Job, By: e.By, Project: e.Project, Flow: e.Flow}
	if err := d.proxySwitch(ctx, r, "rollback", driver.RolledBackBy(by), ctl); err != nil {
		return driver.Record{}, err
	}
	return driver.EntryOf(r, d.Spec.Name, driver.ResultServing).Record(), nil
}

// proxySwitch puts release r in place of what serves, replica by replica;
// what served is recorded with replaced.
func (d *Driver) proxySwitch(ctx context.Context, r driver.Release, kind, replaced, ctl string) error {
	if err := target.PullOnTarget(ctx, d.Engine, d.Creds, d.Out, r.Image); err != nil {
		return err
	}
	led, err := d.ledger(ctx)
	if err != nil {
		return err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return err
	}
	p, err := d.planProxy(ctx, r, led, ctl, kind)
	if err != nil {
		return err
	}
	return p.finish(ctx, d.steps(kind).Run(ctx, p.steps()), replaced)
}

// proxySwitchPlan is one switch behind the proxy.
type proxySwitchPlan struct {
	d     *Driver
	r     driver.Release
	kind  string
	rt    Router
	led   target.Ledger
	ports []proxy.Port
	old   []replica
	news  []replica // made by the steps, replica 1 first
	rc    rendered
	sw    *target.Switch
	// migrating: what serves holds the ports itself (a hand-made
	// container, an anchor, ports_on = "container" before): the proxy can
	// take them only once it stops, about a second of outage, once.
	migrating bool
	anchor    string
	healthErr error
	failedID  string
	// nonce names this switch's containers and aliases: a rollback
	// starts a release whose job made containers before
	nonce int64
}

func (d *Driver) planProxy(ctx context.Context, r driver.Release, led target.Ledger, ctl, kind string) (*proxySwitchPlan, error) {
	p := &proxySwitchPlan{d: d, r: r, kind: kind, rt: d.router(ctl), led: led, nonce: time.Now().UnixNano() % 1e12}
	var err error
	if p.ports, err = d.sitePorts(); err != nil {
		return nil, err
	}
	if p.old, err = d.replicas(ctx); err != nil {
		return nil, err
	}
	var old0 container.InspectResponse
	if len(p.old) > 0 {
		if old0, _, err = d.inspect(ctx, p.old[0].id); err != nil {
			return nil, err
		}
		if _, known := p.led.Find(p.old[0].id); !known { // started by hand, or the ledger was lost
			p.led.Push(adoptedEntry(old0), driver.ResultReplaced)
			if len(p.ports) == 0 && old0.HostConfig != nil {
				p.ports = adoptedPorts(old0.HostConfig.PortBindings)
			}
		}
	}
	if anc, ok, err := d.inspect(ctx, AnchorName(d.Spec.Name)); err != nil {
		return nil, err
	} else if ok {
		p.anchor = anc.ID
	}
	for _, o := range p.old {
		p.migrating = p.migrating || o.publishes
	}
	p.migrating = p.migrating || p.anchor != ""
	if p.rc, err = d.render(r, old0, len(p.old) > 0, true); err != nil {
		return nil, err
	}
	p.sw = &target.Switch{Kind: "proxy-" + kind, Job: r.Job, Since: time.Now().UTC(), Entry: driver.EntryOf(r, "", driver.ResultServing)}
	for _, o := range p.old {
		p.sw.FromIDs = append(p.sw.FromIDs, o.id)
	}
	return p, nil
}

// adoptedPorts are a hand-made container's published ports, as the proxy
// takes them over.
func adoptedPorts(m nat.PortMap) []proxy.Port {
	var out []proxy.Port
	for port, bs := range m {
		for _, b := range bs {
			hp, _ := strconv.Atoi(b.HostPort)
			out = append(out, proxy.Port{HostIP: b.HostIP, HostPort: hp, AppPort: port.Int()})
		}
	}
	sort.Slice(out, func(i, k int) bool { return out[i].HostPort < out[k].HostPort })
	return out
}

// steps are the switch: the release command, the proxy, then per replica
// create, start and check, move traffic, drain and stop the old one.
func (p *proxySwitchPlan) steps() []driver.Step {
	d := p.d
	n := d.Spec.Replicas
	steps := []driver.Step{{Name: "network", Do: p.rt.Network}}
	if !p.migrating {
		steps = append(steps, driver.Step{Name: "proxy", Do: func(ctx context.Context) error { return p.rt.Ensure(ctx, d.site(p.ports, nil, nil)) }})
	} else {
		// the ports are still held by what serves: the proxy runs without
		// them for now, so that the new replicas' health is asked from its
		// side; it publishes them once they are free
		steps = append(steps, driver.Step{Name: "proxy", Do: func(ctx context.Context) error { return p.rt.Ensure(ctx, proxy.Site{Env: d.Spec.Name}) }})
	}
	if len(d.Spec.ReleaseCommand) > 0 && p.kind == "deploy" {
		steps = append(steps, driver.Step{Name: "release-command", Do: p.releaseCommand})
	}
	steps = append(steps, driver.Step{Name: "journal", Do: func(ctx context.Context) error {
		p.led.Switch = p.sw
		return d.store().Write(ctx, p.led)
	}})
	for i := 1; i <= n; i++ {
		i := i
		steps = append(steps,
			driver.Step{Name: fmt.Sprintf("create-%d", i), Do: func(ctx context.Context) error { return p.create(ctx, i) },
				Undo: func(ctx context.Context) error { return p.removeNew(ctx, i) }},
			driver.Step{Name: fmt.Sprintf("start-%d", i), Do: func(ctx context.Context) error { return p.start(ctx, i) },
				Undo: func(ctx context.Context) error { return d.stop(ctx, p.news[i-1].id) }})
		if p.migrating {
			continue // traffic moves once every new replica is up
		}
		steps = append(steps,
			driver.Step{Name: fmt.Sprintf("route-%d", i), Do: func(ctx context.Context) error { return p.route(ctx, i, true) },
				Undo: func(ctx context.Context) error { return p.route(ctx, i-1, false) }},
			driver.Step{Name: fmt.Sprintf("stop-old-%d", i), Do: func(ctx context.Context) error { return p.stopOld(ctx, i) },
				Undo: func(ctx context.Context) error { return p.startOld(ctx, i) }})
	}
	if p.migrating {
		// one step from freeing the ports to the proxy serving the new
		// replicas: the second of outage of a move, once
		steps = append(steps,
			driver.Step{Name: "free-ports", Do: p.freePorts, Undo: p.unfreePorts},
			driver.Step{Name: "proxy", Do: func(ctx context.Context) error {
				if err := p.rt.Ensure(ctx, d.site(p.ports, nil, nil)); err != nil {
					return err
				}
				return p.route(ctx, n, false)
			}})
	}
	return steps
}

// backends after step i: the new replicas 1..i and the old ones after i;
// at the last step the old ones beyond it too are gone.
func (p *proxySwitchPlan) backends(i int) (live, draining []string) {
	for k := 0; k < i && k < len(p.news); k++ {
		live = append(live, p.news[k].alias)
	}
	n := p.d.Spec.Replicas
	for k, o := range p.old {
		switch {
		case !o.running || o.alias == "":
		case k >= i && i < n:
			live = append(live, o.alias)
		case k == i-1 || (i == n && k >= n-1):
			draining = append(draining, o.alias)
		}
	}
	return live, draining
}

// route moves traffic to step i of the switch. With drain (the step, not
// its undo) the same call into NAME-ctl then waits, up to drain_timeout,
// for the requests in flight to the replicas it takes out (a `docker exec`
// each would cost ~70 ms); requests still in flight then are a warning.
func (p *proxySwitchPlan) route(ctx context.Context, i int, drain bool) error {
	d := p.d
	live, draining := p.backends(i)
	if len(live) == 0 { // before the first replica, nothing new served yet
		live = aliases(p.old)
	}
	site := d.site(p.ports, live, draining)
	var warn string
	var err error
	if drain {
		var addrs []string
		for _, a := range draining {
			for _, pt := range p.ports {
				addrs = append(addrs, proxy.Upstream(a, pt.AppPort))
			}
		}
		warn, err = p.rt.Switch(ctx, site, addrs, d.Spec.DrainTimeout.D())
	} else {
		err = p.rt.Apply(ctx, site)
	}
	if err != nil {
		return failure.Systemf("%s: move traffic on the proxy: %w", d.Env, err)
	}
	if i > 0 && i <= len(p.news) {
		joblog.Step(d.Out, "%s: %s takes traffic (%d of %d)", d.Env, replicaName(d.Spec.Name, i), i, d.Spec.Replicas)
	}
	if warn != "" {
		joblog.Warn(d.Out, "%s: requests still in flight after drain_timeout %s: %s", d.Env, d.Spec.DrainTimeout.D(), warn)
	}
	return nil
}

// create makes replica i of the release on the proxy's network, under a
// name of this switch.
func (p *proxySwitchPlan) create(ctx context.Context, i int) error {
	d := p.d
	name := fmt.Sprintf("%s-new-%d-%d", d.Spec.Name, p.nonce, i)
	alias := fmt.Sprintf("%s-%d-%d", d.Spec.Name, p.nonce, i)
	cfg := *p.rc.cfg
	cfg.Labels = map[string]string{LabelAlias: alias}
	for k, v := range p.rc.cfg.Labels {
		cfg.Labels[k] = v
	}
	host := *p.rc.host
	apps := proxy.AppNetwork(d.ProxySpec, d.Spec.Name)
	host.NetworkMode = container.NetworkMode(apps)
	made, err := d.Engine.ContainerCreate(ctx, &cfg, &host,
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{apps: {Aliases: []string{alias}}}}, nil, name)
	if err != nil {
		return failure.Buildf("create the new %s container: %v: check [environments.%s.container] in berth.toml", d.Spec.Name, err, d.Env)
	}
	p.news = append(p.news, replica{id: made.ID, name: name, alias: alias, running: true})
	p.sw.ToIDs = append(p.sw.ToIDs, made.ID)
	if i == 1 {
		p.sw.To, p.sw.ToName = made.ID, name
	}
	for _, n := range d.Spec.Networks {
		if err := d.Engine.NetworkConnect(ctx, n, made.ID, &network.EndpointSettings{}); err != nil {
			return failure.Buildf("connect the new %s to network %s: %v: check networks of [environments.%s.container]", d.Spec.Name, n, err, d.Env)
		}
	}
	return d.store().Write(ctx, p.journalled())
}

// journalled is the ledger with the switch as it stands, when the switch
// is journalled already.
func (p *proxySwitchPlan) journalled() target.Ledger {
	l := p.led
	l.Switch = p.sw
	return l
}

func (p *proxySwitchPlan) removeNew(ctx context.Context, i int) error {
	if i > len(p.news) {
		return nil
	}
	if p.news[i-1].id == p.failedID {
		return nil // kept, stopped, for its logs
	}
	return p.d.remove(ctx, p.news[i-1].id)
}

// start starts replica i and waits until it is healthy, asked from the
// proxy's side: it gets no request before.
func (p *proxySwitchPlan) start(ctx context.Context, i int) error {
	d := p.d
	nr := p.news[i-1]
	t := time.Now()
	err := d.Engine.ContainerStart(ctx, nr.id, container.StartOptions{})
	if err == nil {
		err = p.health(ctx, nr)
	}
	if err != nil {
		p.healthErr, p.failedID = err, nr.id
		return err
	}
	joblog.Step(d.Out, "%s: new %s is healthy after %s", d.Env, replicaName(d.Spec.Name, i), time.Since(t).Round(time.Millisecond))
	return nil
}

// health is the new replica's check: health_cmd in it, else its health
// URL's path (or any answer to /) on its app port, from the proxy.
func (p *proxySwitchPlan) health(ctx context.Context, nr replica) error {
	d := p.d
	timeout := d.Spec.HealthTimeout.D()
	if len(d.Spec.HealthCmd) > 0 {
		return d.waitHealthy(ctx, nr.id, timeout)
	}
	port := 0
	for _, pt := range p.ports {
		port = pt.AppPort
		break
	}
	if port == 0 {
		return d.waitHealthy(ctx, nr.id, timeout) // no port: running counts
	}
	path, any := "/", true
	if d.Spec.HealthURL != "" {
		if u, err := url.Parse(d.Spec.HealthURL); err == nil {
			path, any = u.RequestURI(), false
		}
	}
	err := p.rt.Probe(ctx, "http://"+proxy.Upstream(nr.alias, port)+path, any, timeout)
	if err != nil {
		if ins, ok, _ := d.inspect(context.WithoutCancel(ctx), nr.id); ok && !ins.State.Running {
			return fmt.Errorf("it exited with code %d", ins.State.ExitCode)
		}
		return fmt.Errorf("health check failed: %v", err)
	}
	return nil
}

// stopOld stops old replica i (and, at the last step, those beyond the
// new count), whose requests in flight its route step waited for.
func (p *proxySwitchPlan) stopOld(ctx context.Context, i int) error {
	d := p.d
	for k, o := range p.old {
		if k == i-1 || (i == d.Spec.Replicas && k >= i-1) {
			if err := d.stop(ctx, o.id); err != nil {
				return err
			}
		}
	}
	return nil
}

// startOld is stopOld's undo: the old replicas it stopped serve again.
func (p *proxySwitchPlan) startOld(ctx context.Context, i int) error {
	d := p.d
	for k, o := range p.old {
		if (k == i-1 || (i == d.Spec.Replicas && k >= i-1)) && o.running {
			if err := d.startOnly(ctx, o.id); err != nil {
				return fmt.Errorf("start the previous %s again: %w", o.name, err)
			}
		}
	}
	return nil
}

// freePorts stops what holds the ports the proxy takes over: the old
// containers and their anchor.
func (p *proxySwitchPlan) freePorts(ctx context.Context) error {
	joblog.Step(p.d.Out, "%s: moving to the proxy: its ports pause while the proxy takes them, once", p.d.Env)
	for _, o := range p.old {
		if err := p.d.stop(ctx, o.id); err != nil {
			return err
		}
	}
	if p.anchor != "" {
		return p.d.stop(ctx, p.anchor)
	}
	return nil
}

func (p *proxySwitchPlan) unfreePorts(ctx context.Context) error {
	if p.anchor != "" {
		if err := p.d.startOnly(ctx, p.anchor); err != nil {
			return err
		}
	}
	for _, o := range p.old {
		if o.running {
			if err := p.d.startHealthy(ctx, o.id, "the previous "+o.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// releaseCommand runs the release command in a one-off container of the
// new image, and waits for it.
func (p *proxySwitchPlan) releaseCommand(ctx context.Context) error {
	d := p.d
	cmd := d.Spec.ReleaseCommand
	name := fmt.Sprintf("%s-release-%d", d.Spec.Name, p.nonce)
	cfg := *p.rc.cfg
	cfg.Entrypoint, cfg.Cmd = cmd[:1], cmd[1:]
	cfg.Labels = map[string]string{engine.LabelRole: "release"}
	host := *p.rc.host
	host.NetworkMode = container.NetworkMode(proxy.AppNetwork(d.ProxySpec, d.Spec.Name))
	host.RestartPolicy = container.RestartPolicy{}
	made, err := d.Engine.ContainerCreate(ctx, &cfg, &host, nil, nil, name)
	if err != nil {
		return failure.Buildf("create the release command's container: %v", err)
	}
	defer func() { _ = d.remove(context.WithoutCancel(ctx), made.ID) }()
	for _, n := range d.Spec.Networks {
		if err := d.Engine.NetworkConnect(ctx, n, made.ID, &network.EndpointSettings{}); err != nil {
			return failure.Buildf("connect the release command to network %s: %v", n, err)
		}
	}
	t := time.Now()
	joblog.Step(d.Out, "%s: release command %s", d.Env, strings.Join(cmd, " "))
	if err := d.Engine.ContainerStart(ctx, made.ID, container.StartOptions{}); err != nil {
		return failure.Buildf("start the release command %s: %v: check release_command of [environments.%s.container]", strings.Join(cmd, " "), err, d.Env)
	}
	for {
		ins, err := d.Engine.ContainerInspect(ctx, made.ID)
		if err != nil {
			return failure.Systemf("follow the release command: %w", err)
		}
		if !ins.State.Running {
			if ins.State.ExitCode != 0 {
				return failure.Buildf("the release command %s exited with code %d; nothing was changed, the previous version serves.%s",
					strings.Join(cmd, " "), ins.State.ExitCode, d.lastLogs(ctx, made.ID, 20))
			}
			joblog.Step(d.Out, "%s: release command done in %s", d.Env, time.Since(t).Round(time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// finish records what the steps ended with.
func (p *proxySwitchPlan) finish(ctx context.Context, err error, replaced string) error {
	d := p.d
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err == nil {
		if d.Pause != nil {
			d.Pause(ctx, p.kind+":record")
		}
		var ids []string
		for k, o := range p.old {
			if k > 0 {
				_ = d.remove(cctx, o.id) // only replica 1 is kept, for its logs
				continue
			}
			_ = d.stop(cctx, o.id)
			_ = d.renameTo(cctx, o.id, keptName(d.Spec.Name, o.id, ""))
		}
		if p.anchor != "" {
			_ = d.remove(cctx, p.anchor)
			_ = d.remove(cctx, AnchorName(d.Spec.Name)+"-old")
		}
		for k, nr := range p.news {
			if err := d.renameTo(cctx, nr.id, replicaName(d.Spec.Name, k+1)); err != nil {
				joblog.Warn(d.Out, "rename %s: %v", nr.name, err)
			}
			ids = append(ids, nr.id)
		}
		e := driver.EntryOf(p.r, ids[0], driver.ResultServing)
		e.Replicas = ids
		p.led.Switch = nil
		p.led.Push(e, replaced)
		return d.prune(cctx, p.led)
	}
	var se *driver.StepError
	if !errors.As(err, &se) {
		return err
	}
	back := "the previous version serves"
	if len(p.old) == 0 {
		back = "nothing ran before, so nothing serves now"
	}
	if p.failedID != "" {
		_ = d.stop(cctx, p.failedID)
		_ = d.renameTo(cctx, p.failedID, keptName(d.Spec.Name, p.failedID, "failed"))
		p.led.Push(driver.EntryOf(p.r, p.failedID, driver.ResultFailed), "")
	}
	var unhealthy func() error
	if p.healthErr != nil && strings.HasPrefix(se.Step, "start-") {
		unhealthy = func() error {
			return failure.Buildf("the new %s (%s) did not become healthy: %v; it never got a request, %s.%s", d.Spec.Name, p.r.Tag, p.healthErr, back, d.lastLogs(ctx, p.failedID, 10))
		}
	}
	return d.switchFailed(cctx, &p.led, se, back, unhealthy)
}

// recoverProxy finishes a switch behind the proxy that a killed berth left:
// when every replica that served is still there, they serve again and the
// new ones go; else the new ones, running, stay.
func (d *Driver) recoverProxy(ctx context.Context, led *target.Ledger) error {
	sw := led.Switch
	ctl, why, err := d.anchorImage(ctx)
	if err != nil {
		return err
	}
	if why != "" {
		return failure.Systemf("%s: finish the switch behind the proxy: %s", d.Env, why)
	}
	rt := d.router(ctl)
	ports, err := d.sitePorts()
	if err != nil {
		return err
	}
	inspectAll := func(ids []string) ([]container.InspectResponse, bool) {
		var out []container.InspectResponse
		for _, id := range ids {
			c, ok, err := d.inspect(ctx, id)
			if err != nil || !ok {
				return nil, false
			}
			out = append(out, c)
		}
		return out, true
	}
	from, fromOK := inspectAll(sw.FromIDs)
	to, toOK := inspectAll(sw.ToIDs)
	name := d.Spec.Name
	// the new replicas stay when they had taken over: all made, running,
	// and every old one stopped already
	tookOver := toOK && len(to) == d.Spec.Replicas
	for _, c := range to {
		tookOver = tookOver && c.State.Running
	}
	for _, c := range from {
		tookOver = tookOver && !c.State.Running
	}
	if fromOK && !tookOver {
		var back []string
		for k, c := range from {
			if err := d.renameTo(ctx, c.ID, replicaName(name, k+1)); err != nil {
				return failure.Systemf("%s: put the previous %s back: %w", d.Env, replicaName(name, k+1), err)
			}
			if err := d.startOnly(ctx, c.ID); err != nil {
				return failure.Systemf("%s: start the previous %s again: %w", d.Env, replicaName(name, k+1), err)
			}
			back = append(back, c.Config.Labels[LabelAlias])
		}
		if len(back) > 0 && back[0] != "" {
			if err := rt.Apply(ctx, d.site(ports, back, nil)); err != nil {
				return failure.Systemf("%s: move traffic back on the proxy: %w", d.Env, err)
			}
		}
		for k, c := range to {
			if k > 0 || !strings.HasSuffix(sw.Kind, "deploy") {
				_ = d.remove(ctx, c.ID)
				continue
			}
			// replica 1 is kept, stopped, for its logs and the history
			_ = d.stop(ctx, c.ID)
			if err := d.renameTo(ctx, c.ID, keptName(name, c.ID, "interrupted")); err != nil {
				return failure.Systemf("%s: put the interrupted %s aside: %w", d.Env, name, err)
			}
			led.Push(entryWithID(sw.Entry, c.ID, driver.ResultInterrupted), "")
		}
		joblog.Step(d.Out, "%s: what served before the %s serves again", d.Env, strings.TrimPrefix(sw.Kind, "proxy-"))
	} else if toOK {
		for k, c := range from { // out of the way of the new ones' names
			if k > 0 {
				_ = d.remove(ctx, c.ID)
				continue
			}
			_ = d.stop(ctx, c.ID)
			if err := d.renameTo(ctx, c.ID, keptName(name, c.ID, "")); err != nil {
				return failure.Systemf("%s: put the previous %s aside: %w", d.Env, name, err)
			}
		}
		var live, ids []string
		for k, c := range to {
			if err := d.renameTo(ctx, c.ID, replicaName(name, k+1)); err != nil {
				return failure.Systemf("%s: name the new %s: %w", d.Env, replicaName(name, k+1), err)
			}
			_ = d.startOnly(ctx, c.ID)
			live, ids = append(live, c.Config.Labels[LabelAlias]), append(ids, c.ID)
		}
		if err := rt.Apply(ctx, d.site(ports, live, nil)); err != nil {
			return failure.Systemf("%s: move traffic on the proxy: %w", d.Env, err)
		}
		e := entryWithID(sw.Entry, ids[0], driver.ResultServing)
		e.Replicas = ids
		led.Push(e, driver.ResultReplaced)
		joblog.Step(d.Out, "%s: %s had taken over: it serves", d.Env, orName(sw.Entry.Tag, ids[0]))
	}
	led.Switch = nil
	return d.store().Write(ctx, *led)
}
