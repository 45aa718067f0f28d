package containers

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/stages/containers/proxy"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// LabelPrevious on a container is the id of the one it replaced, for
// people (the ledger is what berth reads).
const LabelPrevious = "berth.previous"

// ContainerEngine is what the container driver needs from the target engine.
type ContainerEngine interface {
	target.LockEngine
	target.Puller
	proxy.Engine
	NetworkConnect(ctx context.Context, network, id string, cfg *network.EndpointSettings) error
	ContainerStart(ctx context.Context, id string, opts container.StartOptions) error
	ContainerStop(ctx context.Context, id string, opts container.StopOptions) error
	ContainerRename(ctx context.Context, id, newName string) error
	ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
	ContainerLogs(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error)
	ContainerExecCreate(ctx context.Context, id string, opts container.ExecOptions) (container.ExecCreateResponse, error)
	ContainerExecAttach(ctx context.Context, id string, opts container.ExecAttachOptions) (types.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, id string) (container.ExecInspect, error)
	ImageImport(ctx context.Context, src image.ImportSource, ref string, opts image.ImportOptions) (io.ReadCloser, error)
	ServerVersion(ctx context.Context) (types.Version, error)
}

// Driver runs an environment as one named container on a Docker
// host, replaced by a health-gated switch with the old one kept for rollback.
type Driver struct {
	Env    string
	Spec   settings.ContainerSpec
	Engine ContainerEngine
	Creds  *target.Credentials
	Out    io.Writer
	// AnchorBinary is a static Linux berth binary, imported as the anchor
	// image (anchor.go). Without it, or on a target that cannot run it, the
	// container publishes its ports itself.
	AnchorBinary string
	// ProxySpec is the target's proxy ([proxy] in berth.toml); Router, when
	// set, stands for it (tests).
	ProxySpec settings.Proxy
	Router    Router
	// Pause is called before each step of a switch ("deploy:stop-old"): the
	// test rig's fault injection. nil does nothing.
	Pause   func(ctx context.Context, step string)
	records *target.LedgerStore
}

// store is the environment's ledger, read once.
func (d *Driver) store() *target.LedgerStore {
	if d.records == nil {
		d.records = &target.LedgerStore{Engine: d.Engine, Env: d.Env, Key: d.Spec.Name}
	}
	return d.records
}

var _ driver.Driver = (*Driver)(nil)

// Lock takes the environment's lock on the target engine.
func (d *Driver) Lock(ctx context.Context, h driver.Holder, timeout time.Duration) (func(), error) {
	return target.EngineLock(ctx, d.Engine, d.Out, d.Env, d.Spec.Name, h, timeout)
}

// Owner is the project that owns the environment, from its ledger.
func (d *Driver) Owner(ctx context.Context, claim string) (string, error) {
	return d.store().Owner(ctx, claim)
}

// createAnchor creates, under a name of this deploy, the anchor that the
// new container joins; startAnchor names and starts it.
func (d *Driver) createAnchor(ctx context.Context, ref string, rc rendered, job int64) (string, error) {
	tmp := fmt.Sprintf("%s-new-%d", AnchorName(d.Spec.Name), job)
	_ = d.Engine.ContainerRemove(ctx, tmp, container.RemoveOptions{Force: true}) // a crashed attempt's leftover
	cfg, host, netCfg := d.anchorConfig(ref, rc.exposed, rc.bindings)
	a, err := d.Engine.ContainerCreate(ctx, cfg, host, netCfg, nil, tmp)
	if err != nil {
		return "", failure.Buildf("create the anchor %s: %v: check ports and networks of [environments.%s.container] in berth.toml", AnchorName(d.Spec.Name), err, d.Env)
	}
	return a.ID, nil
}

// startAnchor starts the anchor the new container joins: the one made for
// this deploy, or the existing one if someone stopped it.
func (d *Driver) startAnchor(ctx context.Context, newAnchor string, anc container.InspectResponse, keep bool) error {
	name := AnchorName(d.Spec.Name)
	switch {
	case newAnchor != "":
		if err := d.Engine.ContainerRename(ctx, newAnchor, name); err != nil {
			return failure.Systemf("rename the new anchor to %s: %w", name, err)
		}
		if err := d.Engine.ContainerStart(ctx, newAnchor, container.StartOptions{}); err != nil {
			return failure.Buildf("start the anchor %s, which publishes %s: %v: is a port taken by something else?", name, strings.Join(d.Spec.Ports, ", "), err)
		}
	case keep && !anc.State.Running:
		if err := d.Engine.ContainerStart(ctx, anc.ID, container.StartOptions{}); err != nil {
			return failure.Systemf("start the anchor %s: %w", name, err)
		}
	}
	return nil
}

func orName(what, id string) string {
	if what != "" {
		return what
	}
	return id[:12]
}

// keptName names a container that no longer serves: NAME-ID12 for replaced
// ones, NAME-ID12-failed, NAME-ID12-rb-USER for rolled-back ones.
func keptName(name, id, why string) string {
	n := name + "-" + id[:12]
	if why != "" {
		n += "-" + why
	}
	return n
}

func (d *Driver) inspect(ctx context.Context, name string) (container.InspectResponse, bool, error) {
	c, err := d.Engine.ContainerInspect(ctx, name)
	if errdefs.IsNotFound(err) {
		return c, false, nil
	}
	if err != nil {
		return c, false, failure.Systemf("inspect container %s: %w", name, err)
	}
	return c, true, nil
}

func (d *Driver) stop(ctx context.Context, id string) error {
	secs := int(d.Spec.StopTimeout.D().Seconds())
	if err := d.Engine.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil && !errdefs.IsNotFound(err) {
		return failure.Systemf("stop container %s: %w", id[:12], err)
	}
	return nil
}

// rendered is the new container, and the ports it publishes or, anchored,
// that its anchor publishes.
type rendered struct {
	cfg      *container.Config
	host     *container.HostConfig
	net      *network.NetworkingConfig
	exposed  nat.PortSet
	bindings nat.PortMap
	layout   string // of the anchor it needs
}

// render builds the new container from the TOML spec. A container that
// someone started by hand is adopted: its ports, env and volumes carry over
// where the spec says nothing. Anchored, the container joins the anchor's
// network namespace and publishes nothing itself.
func (d *Driver) render(r driver.Release, old container.InspectResponse, hasOld, anchored bool) (rendered, error) {
	s := d.Spec
	env := append([]string(nil), s.Env...)
	if s.EnvFile != "" {
		fileEnv, err := readEnvFile(s.EnvFile)
		if err != nil {
			return rendered{}, failure.Systemf("environments.%s.container.env_file: %w", d.Env, err)
		}
		env = append(fileEnv, env...)
	}
	labels := map[string]string{}
	for k, v := range s.Labels {
		labels[k] = v
	}
	for k, v := range driver.Labels(d.Env, driver.EntryOf(r, "", "")) {
		labels[k] = v
	}
	if hasOld {
		labels[LabelPrevious] = old.ID[:12]
	}
	exposed, bindings, err := nat.ParsePortSpecs(s.Ports)
	if err != nil {
		return rendered{}, failure.Systemf("environments.%s.container.ports: %w", d.Env, err)
	}
	var mounts []mount.Mount
	for _, v := range s.Volumes {
		m, err := parseMount(v)
		if err != nil {
			return rendered{}, failure.Systemf("environments.%s.container.volumes: %w", d.Env, err)
		}
		mounts = append(mounts, m)
	}
	cfg := &container.Config{Image: r.Image, Env: env, Labels: labels}
	host := &container.HostConfig{Mounts: mounts, RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyMode(s.Restart)}}
	if hasOld && len(old.Config.Labels[driver.LabelEnv]) == 0 && old.HostConfig != nil { // adopting a hand-made container
		if len(s.Ports) == 0 {
			exposed, bindings = old.Config.ExposedPorts, old.HostConfig.PortBindings
		}
		if len(s.Volumes) == 0 {
			host.Binds, host.Mounts = old.HostConfig.Binds, old.HostConfig.Mounts
		}
		if len(env) == 0 {
			cfg.Env = userEnv(old)
		}
	}
	rc := rendered{cfg: cfg, host: host, net: &network.NetworkingConfig{}, exposed: exposed, bindings: bindings}
	if anchored { // Deploy sets the network mode: the anchor's id
		rc.layout = anchorLayout(exposed, bindings, s.Networks)
		return rc, nil
	}
	cfg.ExposedPorts, host.PortBindings = exposed, bindings
	rc.net.EndpointsConfig = map[string]*network.EndpointSettings{}
	for i, n := range s.Networks {
		if i == 0 {
			host.NetworkMode = container.NetworkMode(n)
		}
		rc.net.EndpointsConfig[n] = &network.EndpointSettings{}
	}
	return rc, nil
}

// userEnv is a hand-made container's env without its image's defaults
// (inspect merges both).
func userEnv(c container.InspectResponse) []string {
	// without the image config at hand, drop the usual image defaults
	var out []string
	for _, e := range c.Config.Env {
		if !strings.HasPrefix(e, "PATH=") {
			out = append(out, e)
		}
	}
	return out
}

func parseMount(v string) (mount.Mount, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
		return mount.Mount{}, fmt.Errorf("%q: use SOURCE:TARGET or SOURCE:TARGET:ro", v)
	}
	m := mount.Mount{Type: mount.TypeVolume, Source: parts[0], Target: parts[1], ReadOnly: len(parts) == 3 && parts[2] == "ro"}
	if strings.HasPrefix(parts[0], "/") {
		m.Type = mount.TypeBind
	}
	return m, nil
}

func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !strings.Contains(l, "=") {
			return nil, fmt.Errorf("%s:%d: not KEY=VALUE", path, n)
		}
		env = append(env, l)
	}
	return env, sc.Err()
}

// waitHealthy waits, up to timeout, for the health URL to answer 2xx, or
// the health command to exit 0; without either, for the container to stay
// up a moment.
func (d *Driver) waitHealthy(ctx context.Context, id string, timeout time.Duration) error {
	s := d.Spec
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ins, err := d.Engine.ContainerInspect(ctx, id)
		if err != nil {
			return err
		}
		if !ins.State.Running {
			return fmt.Errorf("it exited with code %d", ins.State.ExitCode)
		}
		switch {
		case s.HealthURL != "":
			last = httpHealthy(ctx, s.HealthURL)
		case len(s.HealthCmd) > 0:
			last = d.execHealthy(ctx, id)
		default:
			if time.Until(deadline) < timeout-time.Second || timeout < time.Second {
				return nil // up for a second, no check configured
			}
			last = fmt.Errorf("still starting")
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("health check failed for %s: %v", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func httpHealthy(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

func (d *Driver) execHealthy(ctx context.Context, id string) error {
	ex, err := d.Engine.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: d.Spec.HealthCmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return err
	}
	hj, err := d.Engine.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, hj.Reader)
	hj.Close()
	ins, err := d.Engine.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return err
	}
	if ins.ExitCode != 0 {
		return fmt.Errorf("%v exited with %d", d.Spec.HealthCmd, ins.ExitCode)
	}
	return nil
}

// lastLogs is the tail of a container's output, for the job log.
func (d *Driver) lastLogs(ctx context.Context, id string, n int) string {
	rc, err := d.Engine.ContainerLogs(context.WithoutCancel(ctx), id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var b strings.Builder
	_, _ = stdcopy.StdCopy(&b, &b, rc)
	if strings.TrimSpace(b.String()) == "" {
		return ""
	}
	return "\nIts last log lines:\n" + strings.TrimRight(b.String(), "\n")
}

// ledger is the environment's ledger. Without one yet (berth before
// 0.3 kept none), it is made from the containers that carry the
// environment's labels: trusted this once, when berth takes over its own
// earlier deployments.
func (d *Driver) ledger(ctx context.Context) (target.Ledger, error) {
	l, ok, err := d.store().Read(ctx)
	if err != nil || ok {
		return l, err
	}
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", driver.LabelEnv+"="+d.Env), filters.Arg("name", "^/"+d.Spec.Name))})
	if err != nil {
		return l, failure.Systemf("list containers of %s: %w", d.Env, err)
	}
	keptRe := regexp.MustCompile("^" + regexp.QuoteMeta(d.Spec.Name) + "(-[0-9a-f]{12}(-.+)?)?$")
	for _, c := range list {
		if name := containerName(c); keptRe.MatchString(name) && c.Labels[engine.LabelRole] != RoleAnchor {
			result := labelledResult(name)
			if name == d.Spec.Name {
				result = driver.ResultServing
			}
			l.Entries = append(l.Entries, entryOfLabels(c, result))
		}
	}
	sort.SliceStable(l.Entries, func(i, k int) bool { return l.Entries[i].Time.After(l.Entries[k].Time) })
	return l, nil
}

// labelledResult reads an earlier berth's result from a kept name.
func labelledResult(name string) string {
	switch {
	case strings.HasSuffix(name, "-failed"):
		return driver.ResultFailed
	case strings.Contains(name, "-rb-"):
		return driver.RolledBackBy(name[strings.Index(name, "-rb-")+4:])
	default:
		return driver.ResultReplaced
	}
}

// entryOfLabels is a container's ledger entry from its labels.
func entryOfLabels(c container.Summary, result string) driver.Entry {
	e := driver.EntryOfLabels(c.Labels, result)
	e.ID = c.ID
	if e.Time.IsZero() {
		e.Time = time.Unix(c.Created, 0).UTC()
	}
	return e
}

// adoptedEntry records the serving container when the ledger does not
// know it: started by hand, so berth takes it over (docs/deploy.md).
func adoptedEntry(c container.InspectResponse) driver.Entry {
	e := driver.Entry{ID: c.ID, Image: c.Config.Image, Tag: c.Config.Image, Result: driver.ResultServing, Adopted: true}
	if t, err := time.Parse(time.RFC3339Nano, c.Created); err == nil {
		e.Time = t.UTC()
	}
	return e
}

// kept are the containers of the ledger's entries that do not serve,
// newest first, each with its entry: only what berth recorded counts.
func (d *Driver) kept(ctx context.Context, l target.Ledger) ([]container.Summary, []driver.Entry, error) {
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+d.Spec.Name+"-"))})
	if err != nil {
		return nil, nil, failure.Systemf("list containers of %s: %w", d.Env, err)
	}
	byID := map[string]container.Summary{}
	for _, c := range list {
		byID[c.ID] = c
	}
	var cs []container.Summary
	var es []driver.Entry
	for _, e := range l.Entries {
		if c, ok := byID[e.ID]; ok && e.Result != driver.ResultServing {
			cs, es = append(cs, c), append(es, e)
		}
	}
	return cs, es, nil
}

// prune keeps the newest Keep previous containers, stopped, removes the
// rest, and writes the ledger without them.
func (d *Driver) prune(ctx context.Context, l target.Ledger) error {
	kept, _, err := d.kept(ctx, l)
	if err != nil {
		return err
	}
	gone := map[string]bool{}
	for i, c := range kept {
		if i < d.Spec.Keep {
			continue
		}
		if err := d.Engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			return failure.Systemf("remove old container %s: %w", containerName(c), err)
		}
		gone[c.ID] = true
	}
	l.Entries = slices.DeleteFunc(l.Entries, func(e driver.Entry) bool { return gone[e.ID] })
	return d.store().Write(ctx, l)
}

func containerName(c container.Summary) string {
	if len(c.Names) == 0 {
		return c.ID[:12]
	}
	return strings.TrimPrefix(c.Names[0], "/")
}

// joinAnchor makes a kept container ready to start in the anchor: the
// anchor runs, and a container made before the anchor was made again (the
// ports changed since) is made again too, in the current one.
func (d *Driver) joinAnchor(ctx context.Context, chosen *container.Summary) error {
	name := AnchorName(d.Spec.Name)
	anc, hasAnc, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	if !hasAnc {
		return fmt.Errorf("its anchor %s is gone: deploy a version instead", name)
	}
	if !anc.State.Running {
		if err := d.Engine.ContainerStart(ctx, anc.ID, container.StartOptions{}); err != nil {
			return fmt.Errorf("start the anchor %s: %w", name, err)
		}
	}
	if container.NetworkMode(chosen.HostConfig.NetworkMode).ConnectedContainer() == anc.ID {
		return nil
	}
	ins, err := d.Engine.ContainerInspect(ctx, chosen.ID)
	if err != nil {
		return err
	}
	cfg, host := ins.Config, ins.HostConfig
	cfg.Hostname, cfg.Domainname, cfg.ExposedPorts = "", "", nil // the anchor's, in its namespace
	host.NetworkMode = container.NetworkMode("container:" + anc.ID)
	made, err := d.Engine.ContainerCreate(ctx, cfg, host, nil, nil, "")
	if err != nil {
		return fmt.Errorf("make %s again in the current anchor: %w", containerName(*chosen), err)
	}
	if err := d.Engine.ContainerRemove(ctx, chosen.ID, container.RemoveOptions{}); err != nil {
		_ = d.Engine.ContainerRemove(ctx, made.ID, container.RemoveOptions{Force: true})
		return fmt.Errorf("replace %s: %w", containerName(*chosen), err)
	}
	if err := d.Engine.ContainerRename(ctx, made.ID, containerName(*chosen)); err != nil {
		return fmt.Errorf("rename the remade %s: %w", containerName(*chosen), err)
	}
	chosen.ID = made.ID
	return nil
}

// sanitize makes a user name fit a container name.
func sanitize(s string) string {
	if s == "" {
		return "unknown"
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

// History is the ledger's entries whose containers are still there, by
// their current names.
func (d *Driver) History(ctx context.Context) ([]driver.Record, error) {
	led, err := d.ledger(ctx)
	if err != nil {
		return nil, err
	}
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+d.Spec.Name))})
	if err != nil {
		return nil, failure.Systemf("list containers of %s: %w", d.Env, err)
	}
	byID := map[string]container.Summary{}
	for _, c := range list {
		byID[c.ID] = c
	}
	var recs []driver.Record
	for _, e := range led.Entries {
		c, ok := byID[e.ID]
		if !ok {
			continue
		}
		r := e.Record()
		r.ID = containerName(c)
		if e.Result == driver.ResultServing && c.State != "running" {
			r.Result = "stopped"
		}
		recs = append(recs, r)
	}
	sort.SliceStable(recs, func(i, k int) bool { return recs[i].Time.After(recs[k].Time) })
	return recs, nil
}
