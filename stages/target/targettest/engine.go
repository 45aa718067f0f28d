// Package targettest is an in-memory Docker engine for the drivers' unit
// tests: the few Engine API calls a deploy makes (containers, their files,
// images, execs), with the engine's own rules that matter to a switch (one
// name per container, one container per published host port, no removing a
// running container without force) and a hook to fail any call. The real
// engine is tested by the rig (.ci/rig.sh); this one reaches the failure
// paths in `make unit`.
package targettest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Container is one container of the fake engine.
type Container struct {
	ID, Name string // Name without the leading slash
	// Networks are the user networks it is on, with its aliases there.
	Networks map[string][]string
	Config   *container.Config
	Host     *container.HostConfig
	Running  bool
	ExitCode int
	Created  time.Time
	Files    map[string][]byte // absolute path → content
	Mtimes   map[string]time.Time
	Starts   int
	// Logs is what ContainerLogs answers.
	Logs string
}

// Engine is the fake engine. Its zero value is not usable: use New.
type Engine struct {
	mu         sync.Mutex
	containers map[string]*Container // by id
	images     map[string]bool
	execs      map[string]string // exec id → container id
	networks   map[string]string // name → id
	netLabels  map[string]map[string]string
	next       int

	// Fail, when set, is asked before every call with the method's name
	// and its target (a container name or id, an image reference); an
	// error it returns is the call's answer.
	Fail func(method, target string) error
	// Healthy answers the health command of a container of image; nil is
	// healthy.
	Healthy func(image string) bool
	// PullError, when set, is the error a pull of ref reports in its
	// progress stream (the engine's way), e.g. "manifest unknown".
	PullError func(ref string) string
	// Version is what ServerVersion answers.
	Version types.Version
	// OnStart, when set, sees each container that starts, under the
	// engine's lock: a test makes a one-off command end (Running false,
	// ExitCode, Logs).
	OnStart func(c *Container)
}

// New is an empty engine with no image, on linux/GOARCH.
func New() *Engine {
	return &Engine{containers: map[string]*Container{}, images: map[string]bool{}, execs: map[string]string{}, networks: map[string]string{"bridge": "bridge", "host": "host", "none": "none"},
		Version: types.Version{Os: "linux", Arch: runtime.GOARCH, APIVersion: "1.41"}}
}

// AddImage makes refs present, as a pull or a build would.
func (e *Engine) AddImage(refs ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range refs {
		e.images[r] = true
	}
}

// HasImage says whether ref is present.
func (e *Engine) HasImage(ref string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.images[ref]
}

// Get is the container with this name or id, a copy, and whether it exists.
func (e *Engine) Get(nameOrID string) (Container, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.find(nameOrID)
	if c == nil {
		return Container{}, false
	}
	return *c, true
}

// Names lists every container's name, sorted.
func (e *Engine) Names() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.containers {
		out = append(out, c.Name)
	}
	sort.Strings(out)
	return out
}

// Running lists the names of running containers, sorted.
func (e *Engine) Running() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.containers {
		if c.Running {
			out = append(out, c.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Kill stops a container as a crash would, with code.
func (e *Engine) Kill(nameOrID string, code int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.find(nameOrID); c != nil {
		c.Running, c.ExitCode = false, code
	}
}

func (e *Engine) fault(method, target string) error {
	if e.Fail == nil {
		return nil
	}
	return e.Fail(method, target)
}

// find is a container by id, id prefix or name; under e.mu.
func (e *Engine) find(ref string) *Container {
	ref = strings.TrimPrefix(ref, "/")
	if c, ok := e.containers[ref]; ok {
		return c
	}
	for _, c := range e.containers {
		if c.Name == ref {
			return c
		}
	}
	if len(ref) >= 12 {
		for id, c := range e.containers {
			if strings.HasPrefix(id, ref) {
				return c
			}
		}
	}
	return nil
}

// on runs f on the container ref names, under e.mu, after the Fail hook
// of method: the preamble of every call on one container.
func (e *Engine) on(method, ref string, f func(c *Container) error) error {
	if err := e.fault(method, ref); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.find(ref)
	if c == nil {
		return notFound(ref)
	}
	return f(c)
}

func notFound(what string) error {
	return errdefs.NotFound(fmt.Errorf("Error response from daemon: No such container: %s", what))
}

// ImageInspect answers for present images.
func (e *Engine) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	if err := e.fault("ImageInspect", ref); err != nil {
		return image.InspectResponse{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.images[ref] {
		return image.InspectResponse{}, errdefs.NotFound(fmt.Errorf("Error response from daemon: No such image: %s", ref))
	}
	return image.InspectResponse{ID: "sha256:" + fmt.Sprintf("%064x", len(ref)), RepoTags: []string{ref}}, nil
}

// ImagePull makes ref present, or reports PullError in the stream.
func (e *Engine) ImagePull(_ context.Context, ref string, _ image.PullOptions) (io.ReadCloser, error) {
	if err := e.fault("ImagePull", ref); err != nil {
		return nil, err
	}
	if e.PullError != nil {
		if msg := e.PullError(ref); msg != "" {
			return io.NopCloser(strings.NewReader(fmt.Sprintf(`{"error":%q}`+"\n", msg))), nil
		}
	}
	e.AddImage(ref)
	return io.NopCloser(strings.NewReader(`{"status":"Pull complete"}` + "\n")), nil
}

// ImageImport makes ref present.
func (e *Engine) ImageImport(_ context.Context, src image.ImportSource, ref string, _ image.ImportOptions) (io.ReadCloser, error) {
	if err := e.fault("ImageImport", ref); err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, src.Source)
	e.AddImage(ref)
	return io.NopCloser(strings.NewReader(`{"status":"imported"}` + "\n")), nil
}

// ServerVersion is Version.
func (e *Engine) ServerVersion(context.Context) (types.Version, error) {
	if err := e.fault("ServerVersion", ""); err != nil {
		return types.Version{}, err
	}
	return e.Version, nil
}

// ContainerCreate makes a stopped container; a taken name is a conflict,
// a missing image not found.
func (e *Engine) ContainerCreate(_ context.Context, cfg *container.Config, host *container.HostConfig, netCfg *network.NetworkingConfig, _ *ocispec.Platform, name string) (container.CreateResponse, error) {
	if err := e.fault("ContainerCreate", name); err != nil {
		return container.CreateResponse{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.images[cfg.Image] {
		return container.CreateResponse{}, errdefs.NotFound(fmt.Errorf("Error response from daemon: No such image: %s", cfg.Image))
	}
	e.next++
	id := fmt.Sprintf("%012x%052x", e.next, e.next)
	if name == "" {
		name = "auto-" + id[:12]
	}
	if e.find(name) != nil {
		return container.CreateResponse{}, errdefs.Conflict(fmt.Errorf(`Error response from daemon: Conflict. The container name "/%s" is already in use`, name))
	}
	if host == nil {
		host = &container.HostConfig{}
	}
	cp := *cfg
	cp.Labels = map[string]string{}
	for k, v := range cfg.Labels {
		cp.Labels[k] = v
	}
	hp := *host
	nets := map[string][]string{}
	if mode := hp.NetworkMode; mode != "" && !mode.IsContainer() && !mode.IsDefault() {
		if _, ok := e.networks[string(mode)]; !ok {
			return container.CreateResponse{}, errdefs.NotFound(fmt.Errorf("Error response from daemon: network %s not found", mode))
		}
		nets[string(mode)] = nil
		if netCfg != nil && netCfg.EndpointsConfig[string(mode)] != nil {
			nets[string(mode)] = netCfg.EndpointsConfig[string(mode)].Aliases
		}
	}
	e.containers[id] = &Container{ID: id, Name: name, Config: &cp, Host: &hp, Created: time.Now(), Networks: nets,
		Files: map[string][]byte{}, Mtimes: map[string]time.Time{}}
	return container.CreateResponse{ID: id}, nil
}

// ContainerInspect answers by name or id.
func (e *Engine) ContainerInspect(_ context.Context, ref string) (container.InspectResponse, error) {
	if err := e.fault("ContainerInspect", ref); err != nil {
		return container.InspectResponse{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.find(ref)
	if c == nil {
		return container.InspectResponse{}, notFound(ref)
	}
	status := "exited"
	if c.Running {
		status = "running"
	}
	host := *c.Host
	cfg := *c.Config
	nets := map[string]*network.EndpointSettings{}
	for n, al := range c.Networks {
		nets[n] = &network.EndpointSettings{Aliases: al}
	}
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: c.ID, Name: "/" + c.Name, Created: c.Created.UTC().Format(time.RFC3339Nano),
			State:      &container.State{Running: c.Running, Status: status, ExitCode: c.ExitCode},
			HostConfig: &host},
		Config:          &cfg,
		NetworkSettings: &container.NetworkSettings{Networks: nets},
	}, nil
}

// ContainerList filters by name (a regexp on "/name"), label ("k" or
// "k=v") and, without All, running.
func (e *Engine) ContainerList(_ context.Context, opts container.ListOptions) ([]container.Summary, error) {
	if err := e.fault("ContainerList", ""); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var names []*regexp.Regexp
	for _, n := range opts.Filters.Get("name") {
		re, err := regexp.Compile(n)
		if err != nil {
			return nil, errdefs.InvalidParameter(err)
		}
		names = append(names, re)
	}
	var out []container.Summary
	for _, c := range e.containers {
		if !opts.All && !c.Running {
			continue
		}
		if len(names) > 0 && !anyMatch(names, "/"+c.Name) {
			continue
		}
		if !hasLabels(c.Config.Labels, opts.Filters.Get("label")) {
			continue
		}
		s := container.Summary{ID: c.ID, Names: []string{"/" + c.Name}, Image: c.Config.Image, Labels: c.Config.Labels,
			Created: c.Created.Unix(), State: map[bool]string{true: "running", false: "exited"}[c.Running]}
		s.HostConfig.NetworkMode = string(c.Host.NetworkMode)
		if c.Running {
			for port, bs := range c.Host.PortBindings {
				for _, b := range bs {
					pub, _ := strconv.Atoi(b.HostPort)
					s.Ports = append(s.Ports, container.Port{IP: b.HostIP, PrivatePort: uint16(port.Int()), PublicPort: uint16(pub), Type: port.Proto()})
				}
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].ID > out[k].ID }) // newest first, as the engine does
	return out, nil
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

func hasLabels(have map[string]string, want []string) bool {
	for _, w := range want {
		k, v, withValue := strings.Cut(w, "=")
		got, ok := have[k]
		if !ok || (withValue && got != v) {
			return false
		}
	}
	return true
}

// ContainerStart starts it; a host port another running container
// publishes is refused, as the engine refuses it.
func (e *Engine) ContainerStart(_ context.Context, ref string, _ container.StartOptions) error {
	return e.on("ContainerStart", ref, e.start)
}

// start starts c; under e.mu.
func (e *Engine) start(c *Container) error {
	if c.Running {
		return nil
	}
	for _, other := range e.containers {
		if !other.Running || other == c {
			continue
		}
		for port := range c.Host.PortBindings {
			for _, b := range c.Host.PortBindings[port] {
				for _, ob := range other.Host.PortBindings[port] {
					if b.HostPort != "" && b.HostPort == ob.HostPort {
						return errdefs.System(fmt.Errorf("Error response from daemon: driver failed programming external connectivity on endpoint %s: Bind for 0.0.0.0:%s failed: port is already allocated", c.Name, b.HostPort))
					}
				}
			}
		}
	}
	if mode := container.NetworkMode(c.Host.NetworkMode); mode.IsContainer() {
		if peer := e.find(mode.ConnectedContainer()); peer == nil || !peer.Running {
			return errdefs.Conflict(fmt.Errorf("Error response from daemon: cannot join network of a non running container: %s", mode.ConnectedContainer()))
		}
	}
	c.Running, c.ExitCode = true, 0
	c.Starts++
	if e.OnStart != nil {
		e.OnStart(c)
	}
	return nil
}

// ContainerStop stops it.
func (e *Engine) ContainerStop(_ context.Context, ref string, _ container.StopOptions) error {
	return e.on("ContainerStop", ref, func(c *Container) error {
		c.Running = false
		return nil
	})
}

// ContainerRename renames it; a taken name is a conflict.
func (e *Engine) ContainerRename(_ context.Context, ref, name string) error {
	return e.on("ContainerRename", ref, func(c *Container) error {
		if other := e.find(name); other != nil && other != c {
			return errdefs.Conflict(fmt.Errorf(`Error response from daemon: Conflict. The container name "/%s" is already in use`, name))
		}
		c.Name = strings.TrimPrefix(name, "/")
		return nil
	})
}

// ContainerRemove removes it; a running one only with Force.
func (e *Engine) ContainerRemove(_ context.Context, ref string, opts container.RemoveOptions) error {
	return e.on("ContainerRemove", ref, func(c *Container) error {
		if c.Running && !opts.Force {
			return errdefs.Conflict(fmt.Errorf("Error response from daemon: cannot remove a running container %s", c.ID[:12]))
		}
		delete(e.containers, c.ID)
		return nil
	})
}

// ContainerLogs is the container's Logs, as the engine multiplexes them.
func (e *Engine) ContainerLogs(_ context.Context, ref string, _ container.LogsOptions) (io.ReadCloser, error) {
	var b bytes.Buffer
	err := e.on("ContainerLogs", ref, func(c *Container) error {
		if c.Logs != "" {
			hdr := []byte{1, 0, 0, 0, 0, 0, 0, 0}
			n := len(c.Logs)
			hdr[4], hdr[5], hdr[6], hdr[7] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
			b.Write(hdr)
			b.WriteString(c.Logs)
		}
		return nil
	})
	return io.NopCloser(&b), err
}

// ContainerExecCreate makes an exec in a running container.
func (e *Engine) ContainerExecCreate(_ context.Context, ref string, _ container.ExecOptions) (container.ExecCreateResponse, error) {
	var id string
	err := e.on("ContainerExecCreate", ref, func(c *Container) error {
		if !c.Running {
			return errdefs.Conflict(fmt.Errorf("Error response from daemon: container %s is not running", c.ID[:12]))
		}
		e.next++
		id = fmt.Sprintf("exec-%d", e.next)
		e.execs[id] = c.ID
		return nil
	})
	return container.ExecCreateResponse{ID: id}, err
}

// ContainerExecAttach runs it: no output.
func (e *Engine) ContainerExecAttach(_ context.Context, id string, _ container.ExecAttachOptions) (types.HijackedResponse, error) {
	if err := e.fault("ContainerExecAttach", id); err != nil {
		return types.HijackedResponse{}, err
	}
	ours, theirs := net.Pipe()
	_ = theirs.Close()
	return types.HijackedResponse{Conn: ours, Reader: bufio.NewReader(ours)}, nil
}

// ContainerExecInspect says how it ended: the health command of the
// container's image, as Healthy says.
func (e *Engine) ContainerExecInspect(_ context.Context, id string) (container.ExecInspect, error) {
	if err := e.fault("ContainerExecInspect", id); err != nil {
		return container.ExecInspect{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.containers[e.execs[id]]
	if c == nil {
		return container.ExecInspect{}, errdefs.NotFound(fmt.Errorf("no such exec %s", id))
	}
	code := 0
	if e.Healthy != nil && !e.Healthy(c.Config.Image) {
		code = 1
	}
	return container.ExecInspect{ExecID: id, ContainerID: c.ID, ExitCode: code}, nil
}

// CopyToContainer unpacks a tar's regular files below path.
func (e *Engine) CopyToContainer(_ context.Context, ref, path string, content io.Reader, _ container.CopyToContainerOptions) error {
	if err := e.fault("CopyToContainer", ref); err != nil {
		return err
	}
	tr := tar.NewReader(content)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errdefs.InvalidParameter(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		files[strings.TrimSuffix(path, "/")+"/"+strings.TrimPrefix(h.Name, "/")] = b
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.find(ref)
	if c == nil {
		return notFound(ref)
	}
	for p, b := range files {
		c.Files[p], c.Mtimes[p] = b, time.Now()
	}
	return nil
}

// CopyFromContainer packs one file as a tar.
func (e *Engine) CopyFromContainer(_ context.Context, ref, src string) (io.ReadCloser, container.PathStat, error) {
	st, err := e.ContainerStatPath(context.Background(), ref, src)
	if err != nil {
		return nil, st, err
	}
	var out bytes.Buffer
	err = e.on("CopyFromContainer", ref, func(c *Container) error {
		tw := tar.NewWriter(&out)
		_ = tw.WriteHeader(&tar.Header{Name: st.Name, Mode: 0o644, Size: st.Size, ModTime: st.Mtime})
		_, _ = tw.Write(c.Files[src])
		return tw.Close()
	})
	return io.NopCloser(&out), st, err
}

// ContainerStatPath stats one file.
func (e *Engine) ContainerStatPath(_ context.Context, ref, path string) (container.PathStat, error) {
	var st container.PathStat
	err := e.on("ContainerStatPath", ref, func(c *Container) error {
		b, ok := c.Files[path]
		if !ok {
			return errdefs.NotFound(fmt.Errorf("Could not find the file %s in container %s", path, ref))
		}
		st = container.PathStat{Name: path[strings.LastIndex(path, "/")+1:], Size: int64(len(b)), Mtime: c.Mtimes[path]}
		return nil
	})
	return st, err
}

// SetMtime backdates a file, as time passing would (a lock's heartbeat).
func (e *Engine) SetMtime(ref, path string, t time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.find(ref); c != nil {
		c.Mtimes[path] = t
	}
}

// SetLogs sets what a container's logs say.
func (e *Engine) SetLogs(ref, logs string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.find(ref); c != nil {
		c.Logs = logs
	}
}

// Tar is a tar stream of one file, as CopyToContainer takes it.
func Tar(name, body string) *bytes.Buffer {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))})
	_, _ = tw.Write([]byte(body))
	_ = tw.Close()
	return &b
}

// NetworkInspect answers for networks made by NetworkCreate, and the
// engine's own.
func (e *Engine) NetworkInspect(_ context.Context, name string, _ network.InspectOptions) (network.Inspect, error) {
	if err := e.fault("NetworkInspect", name); err != nil {
		return network.Inspect{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	id, ok := e.networks[name]
	if !ok {
		return network.Inspect{}, errdefs.NotFound(fmt.Errorf("Error response from daemon: network %s not found", name))
	}
	return network.Inspect{Name: name, ID: id}, nil
}

// NetworkCreate makes a network; a taken name is a conflict.
func (e *Engine) NetworkCreate(_ context.Context, name string, opts network.CreateOptions) (network.CreateResponse, error) {
	if err := e.fault("NetworkCreate", name); err != nil {
		return network.CreateResponse{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.networks[name]; ok {
		return network.CreateResponse{}, errdefs.Conflict(fmt.Errorf("Error response from daemon: network with name %s already exists", name))
	}
	e.next++
	id := fmt.Sprintf("net%061x", e.next)
	e.networks[name] = id
	if e.netLabels == nil {
		e.netLabels = map[string]map[string]string{}
	}
	e.netLabels[name] = opts.Labels
	return network.CreateResponse{ID: id}, nil
}

// NetworkList lists the networks made by NetworkCreate, by label.
func (e *Engine) NetworkList(_ context.Context, opts network.ListOptions) ([]network.Summary, error) {
	if err := e.fault("NetworkList", ""); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []network.Summary
	for name, labels := range e.netLabels {
		if hasLabels(labels, opts.Filters.Get("label")) {
			out = append(out, network.Summary{Name: name, ID: e.networks[name], Labels: labels})
		}
	}
	return out, nil
}

// NetworkConnect puts a container on a network.
func (e *Engine) NetworkConnect(_ context.Context, net, ref string, cfg *network.EndpointSettings) error {
	return e.on("NetworkConnect", ref, func(c *Container) error {
		if _, ok := e.networks[net]; !ok {
			return errdefs.NotFound(fmt.Errorf("Error response from daemon: network %s not found", net))
		}
		var al []string
		if cfg != nil {
			al = cfg.Aliases
		}
		c.Networks[net] = al
		return nil
	})
}
