package executor

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
)

// Prepare creates the job's network, starts its services and its container.
// On failure the runner calls cleanup, which removes whatever was made.
func (e *Executor) Prepare(ctx context.Context) error {
	start := e.Now()
	img := e.Job.Image.Name
	if img == "" {
		img = e.Settings.Job.DefaultImage
	}
	joblog.Banner(e.Out, e.Version, fmt.Sprintf("job %d", e.Job.ID), fmt.Sprintf("ref %s (%s)", e.Job.Ref, e.Job.RefType),
		"stage "+e.Job.Stage, "image "+orNone(img))
	if e.Check != nil {
		if err := e.Check(); err != nil {
			return err
		}
	}
	// a native stage runs no script of the job, unless it has after_script
	needsContainer := e.Native == nil || e.Job.AfterScript
	if img == "" && needsContainer {
		return failure.Buildf("the job has no image: and berth.toml sets no job.default_image: add image: to the job in .gitlab-ci.yml")
	}

	for _, dir := range []string{JobDir(e.Settings, e.Job), HelperSocketDir(JobDir(e.Settings, e.Job)), CacheDirFor(e.Settings, e.Job)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return failure.Systemf("create %s on the runner host: %w (check berth.toml builds_dir/cache_dir and their permissions)", dir, err)
		}
	}

	t := e.Now()
	if needsContainer {
		if err := e.pullFor("image", img, e.Job.Image.PullPolicy); err != nil {
			return err
		}
		for _, svc := range e.Job.Services {
			if err := e.pullFor("service", svc.Name, svc.PullPolicy); err != nil {
				return err
			}
		}
	}
	if err := e.ensureHelperImage(); err != nil {
		return err
	}
	pullTook := since(t)

	if !needsContainer {
		t = e.Now()
		net := e.Settings.Job.HelperNetwork
		if e.usesSpares() {
			if spare := e.takeSpare(ctx); spare != "" {
				net = "container:" + spare
			} else {
				e.refill("") // for the next jobs
			}
		}
		if net == "" {
			net = HelpersNetwork
			if err := ensureHelpersNetwork(ctx, e.Engine, e.Version); err != nil {
				return err
			}
		}
		id, err := e.createHelper(ctx, net)
		if err == nil {
			err = e.startHelper(ctx, id)
		}
		if err != nil {
			return err
		}
		e.stepf("native stage without after_script: no job container needed; helper started (%s)", since(t))
		return nil
	}
	if err := e.createNetwork(ctx); err != nil {
		return err
	}
	t = e.Now()
	var started []serviceRef
	for i, svc := range e.Job.Services {
		s, err := e.startService(ctx, i, svc)
		if err != nil {
			return err
		}
		started = append(started, s)
		e.stepf("service %s started as %s", svc.Name, strings.Join(s.aliases, ", "))
	}
	svcTook := since(t)

	// The helper joins the job container's network namespace, as a pod's
	// containers do: a network endpoint of its own would cost more than the
	// container. What the job could see of the helper's traffic is TLS to
	// GitLab with tokens the job holds itself (docs/security.md).
	t = e.Now()
	jobID, err := e.createJobContainer(ctx, img)
	if err != nil {
		return err
	}
	net := "container:" + jobID
	if e.Settings.Job.HelperNetwork != "" {
		net = e.Settings.Job.HelperNetwork
	}
	helperID, err := e.createHelper(ctx, net)
	if err != nil {
		return err
	}
	if err := e.startJobContainer(ctx, jobID, img); err != nil {
		return err
	}
	if err := e.startHelper(ctx, helperID); err != nil {
		return err
	}
	e.stepf("container %s and its helper started (%s)", ContainerName(e.Job), since(t))
	e.waitServices(ctx, started)
	e.stepf("prepared in %s (images %s, services %s)", since(start), pullTook, svcTook)
	return nil
}

// pullFor is ensureImage with the job log line, for the job's images.
func (e *Executor) pullFor(what, ref string, asked []string) error {
	policy, err := e.pullPolicy(ref, asked)
	if err != nil {
		return err
	}
	t := e.Now()
	ctx := context.Background() // a pull is bounded by its own timeout
	pulled, err := e.ensureImage(ctx, ref, policy)
	if err != nil {
		return err
	}
	if pulled {
		e.stepf("%s %s pulled (%s)", what, ref, since(t))
	} else {
		e.stepf("%s %s present", what, ref)
	}
	return nil
}

func (e *Executor) createNetwork(ctx context.Context) error {
	name := NetworkName(e.Job)
	_, err := e.Engine.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Labels: e.labels(RoleJob)})
	if err != nil && !errdefs.IsConflict(err) { // a retried prepare finds its own network
		return failure.Systemf("create network %s: %w", name, err)
	}
	return nil
}

type serviceRef struct {
	id      string
	name    string
	aliases []string
}

// startService runs one of the job's services on the job network, reachable
// by the aliases the Docker executor would give it.
func (e *Executor) startService(ctx context.Context, i int, svc api.Image) (serviceRef, error) {
	aliases := ServiceAliases(svc)
	name := fmt.Sprintf("%s-svc-%d", ContainerName(e.Job), i)
	cfg := &container.Config{
		Image:  svc.Name,
		Env:    e.serviceEnv(svc),
		Labels: e.labels(RoleService),
	}
	if len(svc.Entrypoint) > 0 {
		cfg.Entrypoint = svc.Entrypoint
	}
	if len(svc.Command) > 0 {
		cfg.Cmd = svc.Command
	}
	host := e.hostConfig(nil)
	netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		NetworkName(e.Job): {Aliases: aliases},
	}}
	resp, err := e.Engine.ContainerCreate(ctx, cfg, host, netCfg, nil, name)
	if err != nil {
		return serviceRef{}, failure.Systemf("create service %s: %s", svc.Name, e.redactErr(err))
	}
	if err := e.Engine.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return serviceRef{}, failure.Buildf("start service %s: %s: check its entrypoint and command in .gitlab-ci.yml", svc.Name, e.redactErr(err))
	}
	return serviceRef{id: resp.ID, name: svc.Name, aliases: aliases}, nil
}

// serviceEnv is the service's own variables plus the job's public ones:
// masked and file variables stay out of container configs, where
// `docker inspect` would show them.
func (e *Executor) serviceEnv(svc api.Image) []string {
	var env []string
	for _, v := range e.Job.Variables {
		if !v.Masked && !v.File && v.Public {
			env = append(env, v.Key+"="+v.Value)
		}
	}
	for _, v := range svc.Variables {
		env = append(env, v.Key+"="+v.Value)
	}
	return env
}

var aliasSplit = regexp.MustCompile(`[\s,]+`)

// ServiceAliases are the host names a service answers to: the explicit
// aliases, and as in the Docker executor the image name without tag, with
// "/" as "__" and as "-".
func ServiceAliases(svc api.Image) []string {
	var out []string
	add := func(a string) {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, a := range aliasSplit.Split(svc.Alias, -1) {
		add(a)
	}
	name := svc.Name
	if named, err := reference.ParseNormalizedNamed(name); err == nil {
		name = reference.FamiliarName(named)
	} else if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	add(strings.ReplaceAll(name, "/", "__"))
	add(strings.ReplaceAll(name, "/", "-"))
	return out
}

// createJobContainer makes the long-lived container that the job's own
// stages are executed in. Its main process is a shell that waits on an
// open stdin, so it lives until cleanup, and stopping a script never stops
// it.
func (e *Executor) createJobContainer(ctx context.Context, img string) (string, error) {
	dir := JobDir(e.Settings, e.Job)
	cfg := &container.Config{
		Image:      img,
		Entrypoint: []string{"sh"},
		OpenStdin:  true,
		WorkingDir: dir,
		Labels:     e.labels(RoleJob),
	}
	if len(e.Job.Image.Entrypoint) > 0 { // the job asked for its own entrypoint
		cfg.Entrypoint = e.Job.Image.Entrypoint
		cfg.Cmd = []string{"sh"}
	}
	cache := CacheDirFor(e.Settings, e.Job)
	mounts := []mount.Mount{
		{Type: mount.TypeBind, Source: dir, Target: dir},
		{Type: mount.TypeBind, Source: cache, Target: cache},
		// the helper's socket is the helper's: the job sees an empty dir
		{Type: mount.TypeTmpfs, Target: HelperSocketDir(dir)},
	}
	host := e.hostConfig(mounts)
	host.NetworkMode = container.NetworkMode(NetworkName(e.Job))
	name := ContainerName(e.Job)
	resp, err := e.Engine.ContainerCreate(ctx, cfg, host, nil, nil, name)
	if err != nil {
		return "", failure.Systemf("create job container %s: %s", name, e.redactErr(err))
	}
	return resp.ID, nil
}

// startJobContainer starts it, and checks that its shell keeps running.
func (e *Executor) startJobContainer(ctx context.Context, id, img string) error {
	name := ContainerName(e.Job)
	resp := container.CreateResponse{ID: id}
	if err := e.Engine.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return failure.Buildf("start job container from %s: %s: the image needs a shell (sh) at its PATH", img, e.redactErr(err))
	}
	// a shell that is missing or exits at once shows up only after start
	time.Sleep(50 * time.Millisecond)
	ins, err := e.Engine.ContainerInspect(ctx, resp.ID)
	if err != nil {
		return failure.Systemf("inspect job container %s: %w", name, err)
	}
	if !ins.State.Running {
		return failure.Buildf("job container from %s exited at start (exit code %d): the image needs a shell (sh) that berth can keep running", img, ins.State.ExitCode)
	}
	return nil
}

// hostConfig is shared by job and service containers: never privileged, no
// mounts but the job's dirs and what the TOML allows, the TOML's limits.
func (e *Executor) hostConfig(mounts []mount.Mount) *container.HostConfig {
	for _, v := range e.Settings.Job.Volumes {
		vol, _ := settings.ParseVolume(v) // validated when the TOML was read
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: vol.Host, Target: vol.Container, ReadOnly: vol.ReadOnly})
	}
	h := &container.HostConfig{
		Mounts:     mounts,
		Privileged: false,
		Resources: container.Resources{
			Memory:   e.Settings.Job.Memory,
			NanoCPUs: int64(e.Settings.Job.CPUs * 1e9),
		},
	}
	return h
}

// waitServices waits, bounded by job.service_wait, until each service's
// exposed TCP ports accept connections, like the Docker executor's health
// check. A service that stays closed is a warning, not a failure.
func (e *Executor) waitServices(ctx context.Context, services []serviceRef) {
	if !e.LocalEngine || len(services) == 0 {
		return
	}
	deadline := e.Now().Add(e.Settings.Job.ServiceWait.D())
	for _, s := range services {
		ins, err := e.Engine.ContainerInspect(ctx, s.id)
		if err != nil || ins.NetworkSettings == nil || ins.Config == nil {
			continue
		}
		ep := ins.NetworkSettings.Networks[NetworkName(e.Job)]
		if ep == nil || ep.IPAddress == "" {
			continue
		}
		for port := range ins.Config.ExposedPorts {
			if port.Proto() != "tcp" {
				continue
			}
			addr := net.JoinHostPort(ep.IPAddress, port.Port())
			if !dialUntil(ctx, addr, deadline) {
				e.stepf("warning: service %s did not open port %s within %s", s.name, port.Port(), e.Settings.Job.ServiceWait.D())
			}
		}
	}
}

func dialUntil(ctx context.Context, addr string, deadline time.Time) bool {
	for {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
