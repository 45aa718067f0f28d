package settings

import (
	"fmt"
	"path"
	"regexp"
	"regexp/syntax"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/docker/go-connections/nat"
)

// Stage actions in the [stages] table.
const (
	ActionScript  = "script"  // run the job's own script in its container
	ActionDeploy  = "deploy"  // build, push and deploy the flow's environment
	ActionRelease = "release" // promote the tested image to the tag
)

// Environment drivers.
const (
	DriverContainer = "container"
	DriverCompose   = "compose"
	DriverKube      = "kube"
)

// Drivers are the environment drivers berth has.
func Drivers() []string { return []string{DriverContainer, DriverCompose, DriverKube} }

// Registry is where built images go.
type Registry struct {
	// Image is the repository, without tag; "{project}" in it is the job's
	// project path (job_info.project_full_path, lowercased). Empty means the
	// GitLab registry of the job's payload credentials, at the project's
	// path. A job's CI_REGISTRY_IMAGE never counts.
	Image    string `toml:"image"`
	Username string `toml:"username"`
	Password string `toml:"password"`
	// Retries of a push or promotion after a transient error.
	Retries int `toml:"retries"`
}

// Build is how deploy and release build an image from the sources.
type Build struct {
	Dockerfile string            `toml:"dockerfile"` // relative to the context
	Context    string            `toml:"context"`    // relative to the project dir
	Args       map[string]string `toml:"args"`
	// JobOverrides names what job variables may change: "dockerfile"
	// (BERTH_DOCKERFILE), "context" (BERTH_CONTEXT) and "args.NAME"
	// (BERTH_BUILD_ARG_NAME). Nothing else can be steered by a job.
	JobOverrides []string `toml:"job_overrides"`
}

// Flow maps refs to an image tag and an environment. The first flow whose
// branch or tag pattern matches the job's ref wins.
type Flow struct {
	Name string `toml:"name"`
	// Branch or Tag is a regular expression matched against the whole ref
	// name; a flow has one of them.
	Branch string `toml:"branch"`
	Tag    string `toml:"tag"`
	// ImageTag is the tag to build or promote: a literal, or "{ref}".
	ImageTag string `toml:"image_tag"`
	// Environment is deployed by the deploy stage ("" deploys nothing).
	Environment string `toml:"environment"`
	// Candidates are the tags, in order, a release looks for an image of
	// the same commit in: "{version}" is the tag without its leading v and
	// any -hotfixN suffix.
	Candidates []string `toml:"candidates"`
}

// Environment is a deploy target.
type Environment struct {
	Driver string `toml:"driver"`
	// Manual environments deploy only from a job started by hand
	// (CI_JOB_MANUAL=true).
	Manual bool `toml:"manual"`
	// Protected environments deploy only from refs that GitLab protects
	// (the payload's git_info.protected) and that a flow sends there.
	Protected bool `toml:"protected"`
	// Projects may deploy and roll back the environment: full paths, or
	// "group/*" for a group's projects. Empty: the first project that
	// deploys it owns it (recorded at the target).
	Projects []string `toml:"projects"`
	// LockTimeout bounds the wait for another deploy of the environment.
	LockTimeout Duration `toml:"lock_timeout"`
	// DockerHost is the target engine (unix://, tcp://, ssh://); empty is
	// the job engine.
	DockerHost string `toml:"docker_host"`
	// SSHOptions are extra ssh flags for an ssh:// docker_host, e.g.
	// ["-i", "/etc/gitlab-runner/deploy_key"].
	SSHOptions []string      `toml:"ssh_options"`
	Container  ContainerSpec `toml:"container"`
	Compose    ComposeSpec   `toml:"compose"`
	Kube       KubeSpec      `toml:"kube"`
}

// KubeSpec is a `kube` environment: a workload on Kubernetes whose
// containers take each release by digest.
type KubeSpec struct {
	// Kubeconfig and Context say which cluster; empty Kubeconfig is
	// $KUBECONFIG, then ~/.kube/config. InCluster uses the pod's service
	// account instead.
	Kubeconfig string `toml:"kubeconfig"`
	Context    string `toml:"context"`
	InCluster  bool   `toml:"in_cluster"`
	Namespace  string `toml:"namespace"`
	// Deployment is the workload's name (default: the environment's name).
	Deployment string `toml:"deployment"`
	// Containers take the image; empty means every container whose image
	// is the registry image.
	Containers     []string `toml:"containers"`
	RolloutTimeout Duration `toml:"rollout_timeout"`
	// UnschedulableAfter is how long a new pod may stay unschedulable
	// before the rollout counts as failed (a cluster autoscaler needs
	// minutes to add a node).
	UnschedulableAfter Duration `toml:"unschedulable_after"`
	// PullSecret, if set, is the image pull secret berth creates or
	// refreshes from the registry login and adds to the pod template.
	PullSecret string `toml:"pull_secret"`
}

// ComposeSpec is a `compose` environment: the team's own compose project,
// some of whose services take the new image.
type ComposeSpec struct {
	// Files are relative to the checked-out sources (to the current
	// directory for berth rollback by hand), or absolute on the runner
	// host; empty is compose's own lookup (compose.yaml, ...).
	Files []string `toml:"files"`
	// Project is the compose project name; default the environment's name.
	Project string `toml:"project"`
	// Services take the new image; empty means every service whose image
	// is the registry image.
	Services    []string `toml:"services"`
	EnvFiles    []string `toml:"env_files"`
	Profiles    []string `toml:"profiles"`
	WaitTimeout Duration `toml:"wait_timeout"`
	// Keep is how many earlier deployments the history remembers.
	Keep int `toml:"keep"`
	// Allow lets the project's compose file use what berth refuses by
	// default (ComposeAllowances).
	Allow []string `toml:"allow"`
}

// ComposeAllowances are what a compose file from the checkout may use only
// when the environment's compose.allow names it.
var ComposeAllowances = []string{
	"privileged",      // privileged: true
	"cap_add",         // added capabilities
	"devices",         // host devices
	"host_namespaces", // network_mode/pid/ipc/uts/userns_mode/cgroup: host, or another container's
	"security_opt",    // seccomp, apparmor or label overrides
	"bind_mounts",     // host paths as volumes (bind mounts, local volumes with a device)
	"docker_socket",   // the Docker socket, even where bind_mounts is allowed
	"host_files",      // env_file, secrets, configs, extends or include outside the checkout
	"names",           // container, network and volume names berth uses (berth-*, the environments' containers)
	"berth_labels",    // berth.* labels, which berth writes itself
	"registry_logins", // the runner's docker logins for the other services' images
}

// ContainerSpec renders the one container of a `container` environment.
type ContainerSpec struct {
	Name     string            `toml:"name"`
	Ports    []string          `toml:"ports"` // [HOST_IP:]HOST:CONTAINER[/proto]
	Env      []string          `toml:"env"`   // KEY=VALUE
	EnvFile  string            `toml:"env_file"`
	Volumes  []string          `toml:"volumes"` // SOURCE:TARGET[:ro], named volume or absolute path
	Networks []string          `toml:"networks"`
	Restart  string            `toml:"restart"` // no, always, unless-stopped, on-failure
	Labels   map[string]string `toml:"labels"`
	// Health: an HTTP URL that must answer 2xx, or a command run in the
	// container that must exit 0; neither means "running".
	HealthURL     string   `toml:"health_url"`
	HealthCmd     []string `toml:"health_cmd"`
	HealthTimeout Duration `toml:"health_timeout"`
	StopTimeout   Duration `toml:"stop_timeout"`
	// Keep is how many previous containers stay, stopped, for rollback.
	Keep int `toml:"keep"`
	// PortsOn is where the ports are published: "proxy" (berth's Caddy in
	// front, HTTP only: health before traffic, no request lost), "anchor"
	// (a NAME-net container that the app's containers join, so a switch
	// does not re-plumb the port: for raw TCP) or "container" (the app's
	// container itself).
	PortsOn string `toml:"ports_on"`

	// With the proxy: Replicas containers behind it, replaced one at a
	// time; Hosts it serves on the proxy's HTTP and HTTPS ports by name,
	// with TLS "acme" (certificates from Let's Encrypt or ZeroSSL),
	// "internal" (Caddy's own CA: tests, private networks) or "off";
	// DrainTimeout bounds the wait for requests in flight to a replaced
	// container.
	Replicas     int      `toml:"replicas"`
	Hosts        []string `toml:"hosts"`
	TLS          string   `toml:"tls"`
	DrainTimeout Duration `toml:"drain_timeout"`
	// ReleaseCommand runs once in a one-off container of the new image,
	// with the environment's env, networks and volumes, before traffic
	// moves (database migrations); a failure stops the deploy.
	ReleaseCommand []string `toml:"release_command"`
}

// Values of ContainerSpec.PortsOn.
const (
	PortsOnProxy     = "proxy"
	PortsOnAnchor    = "anchor"
	PortsOnContainer = "container"
)

// Values of ContainerSpec.TLS.
const (
	TLSACME     = "acme"
	TLSInternal = "internal"
	TLSOff      = "off"
)

// Proxy is the [proxy] table: the Caddy that berth runs on each Docker
// target in front of the container environments whose ports_on is proxy.
type Proxy struct {
	// Image is Caddy's image; berth runs it with `caddy run --resume`.
	Image string `toml:"image"`
	// Name is its container; Network the private network of the proxy and
	// the apps behind it.
	Name    string `toml:"name"`
	Network string `toml:"network"`
	// HTTPPort and HTTPSPort are the host ports that serve the
	// environments' hosts; HostIP the address they are published on.
	HTTPPort  int    `toml:"http_port"`
	HTTPSPort int    `toml:"https_port"`
	HostIP    string `toml:"host_ip"`
	// Email is the ACME account's, for certificates of tls = "acme".
	Email string `toml:"email"`
	// Manage: berth creates the proxy, and recreates it when a port it
	// must publish is new. false: an existing Caddy container of that
	// name, on that network, with its admin API on localhost:2019, is
	// used as it is; berth only changes its own sites in its config.
	Manage bool `toml:"manage"`
}

// DefaultStages are the built-in stage names.
func DefaultStages() map[string]string {
	return map[string]string{"style": ActionScript, "test": ActionScript, "deploy": ActionDeploy, "release": ActionRelease}
}

// DefaultFlows are the gitflow of DEVELOPERS.md.
func DefaultFlows() []Flow {
	return []Flow{
		{Name: "develop", Branch: `develop`, ImageTag: "develop", Environment: "integration"},
		{Name: "release", Branch: `release-\d+\.\d+\.\d+`, ImageTag: "{ref}", Environment: "alpha"},
		{Name: "tag", Tag: `v\d+\.\d+\.\d+(-hotfix\d+)?`, ImageTag: "{ref}", Environment: "prod",
			Candidates: []string{"release-{version}", "develop", "latest"}},
		{Name: "master", Branch: `master|main`, ImageTag: "latest", Environment: "web"},
	}
}

// DefaultEnvironments match DefaultFlows.
func DefaultEnvironments() map[string]Environment {
	return map[string]Environment{
		"integration": {Driver: DriverCompose},
		"alpha":       {Driver: DriverKube},
		"prod":        {Driver: DriverKube, Manual: true, Protected: true},
		"web": {Driver: DriverContainer, Container: ContainerSpec{
			Name: "web", Ports: []string{"6000:5000"}, Restart: "unless-stopped",
		}},
	}
}

// applyDeployDefaults fills what a file left out; called after decoding.
func (s *Settings) applyDeployDefaults() {
	if s.Stages == nil {
		s.Stages = DefaultStages()
	}
	if s.Flows == nil {
		s.Flows = DefaultFlows()
	}
	if s.Environments == nil {
		s.Environments = DefaultEnvironments()
	}
	for name, env := range s.Environments {
		if env.LockTimeout == 0 {
			env.LockTimeout = Duration(10 * time.Minute)
		}
		c := &env.Container
		if c.Name == "" {
			c.Name = name
		}
		if c.HealthTimeout == 0 {
			c.HealthTimeout = Duration(30 * time.Second)
		}
		if c.StopTimeout == 0 {
			c.StopTimeout = Duration(10 * time.Second)
		}
		if c.Keep == 0 {
			c.Keep = 2
		}
		if c.PortsOn == "" {
			c.PortsOn = PortsOnProxy
		}
		if c.Replicas == 0 {
			c.Replicas = 1
		}
		if c.TLS == "" {
			c.TLS = TLSACME
		}
		if c.DrainTimeout == 0 {
			c.DrainTimeout = Duration(30 * time.Second)
		}
		if env.Compose.Project == "" {
			env.Compose.Project = name
		}
		if env.Compose.WaitTimeout == 0 {
			env.Compose.WaitTimeout = Duration(2 * time.Minute)
		}
		if env.Compose.Keep == 0 {
			env.Compose.Keep = 10
		}
		if env.Kube.Namespace == "" {
			env.Kube.Namespace = "default"
		}
		if env.Kube.Deployment == "" {
			env.Kube.Deployment = name
		}
		if env.Kube.RolloutTimeout == 0 {
			env.Kube.RolloutTimeout = Duration(5 * time.Minute)
		}
		if env.Kube.UnschedulableAfter == 0 {
			env.Kube.UnschedulableAfter = Duration(5 * time.Second)
		}
		s.Environments[name] = env
	}
	if s.Build.Dockerfile == "" {
		s.Build.Dockerfile = "Dockerfile"
	}
	if s.Build.Context == "" {
		s.Build.Context = "."
	}
	if s.Registry.Retries == 0 {
		s.Registry.Retries = 4
	}
}

func (s *Settings) validateDeploy(errs *problems) {
	bad := errs.bad
	px := s.Proxy
	if px.Image == "" {
		bad("proxy.image", "must name Caddy's image (caddy:2)")
	}
	if !nameRe.MatchString(px.Name) {
		bad("proxy.name", "%q is not a container name", px.Name)
	}
	if !nameRe.MatchString(px.Network) {
		bad("proxy.network", "%q is not a network name", px.Network)
	}
	for key, port := range map[string]int{"http_port": px.HTTPPort, "https_port": px.HTTPSPort} {
		if port < 1 || port > 65535 {
			bad("proxy."+key, "%d is not a port", port)
		}
	}
	for _, name := range sortedKeys(s.Stages) {
		switch s.Stages[name] {
		case ActionScript, ActionDeploy, ActionRelease:
		default:
			bad("stages."+name, "%q is not an action (use script, deploy or release)", s.Stages[name])
		}
	}
	if s.Registry.Retries < 0 {
		bad("registry.retries", "must not be negative")
	}
	for i, f := range s.Flows {
		field := fmt.Sprintf("flows[%d]", i)
		if (f.Branch == "") == (f.Tag == "") {
			bad(field, "flow %q: set exactly one of branch and tag", f.Name)
		}
		for key, re := range map[string]string{"branch": f.Branch, "tag": f.Tag} {
			if re == "" {
				continue
			}
			if why := refPatternProblem(re); why != "" {
				bad(field+"."+key, "flow %q: %s", f.Name, why)
			}
		}
		if f.ImageTag == "" {
			bad(field+".image_tag", "flow %q: image_tag is empty (use a literal tag or \"{ref}\")", f.Name)
		}
		if _, ok := s.Environments[f.Environment]; f.Environment != "" && !ok {
			bad(field+".environment", "flow %q: environment %q is not defined under [environments]", f.Name, f.Environment)
		}
	}
	for _, name := range sortedKeys(s.Environments) {
		env := s.Environments[name]
		at := "environments." + name
		if !slices.Contains(Drivers(), env.Driver) {
			bad(at+".driver", "%q is not a driver (use %s)", env.Driver, strings.Join(Drivers(), ", "))
		}
		if env.LockTimeout <= 0 {
			bad(at+".lock_timeout", "must be more than zero")
		}
		c := env.Container
		if c.Keep < 0 {
			bad(at+".container.keep", "must not be negative")
		}
		if env.Driver == DriverContainer {
			if _, _, err := nat.ParsePortSpecs(c.Ports); err != nil {
				bad(at+".container.ports", "%v (use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp])", err)
			}
			if !validRestart(c.Restart) {
				bad(at+".container.restart", "%q is not a restart policy (use no, always, unless-stopped or on-failure[:N])", c.Restart)
			}
			for _, kv := range c.Env {
				if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
					bad(at+".container.env", "%q is not KEY=VALUE", strings.SplitN(kv, "=", 2)[0])
				}
			}
			for _, v := range c.Volumes {
				if parts := strings.Split(v, ":"); len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
					bad(at+".container.volumes", "%q: use SOURCE:TARGET or SOURCE:TARGET:ro", v)
				}
			}
			if c.HealthURL != "" && !strings.HasPrefix(c.HealthURL, "http://") && !strings.HasPrefix(c.HealthURL, "https://") {
				bad(at+".container.health_url", "%q is not an http(s) URL", c.HealthURL)
			}
		}
		for key, d := range map[string]Duration{"container.health_timeout": c.HealthTimeout, "container.stop_timeout": c.StopTimeout,
			"compose.wait_timeout": env.Compose.WaitTimeout, "kube.rollout_timeout": env.Kube.RolloutTimeout, "kube.unschedulable_after": env.Kube.UnschedulableAfter} {
			if d < 0 {
				bad(at+"."+key, "must not be negative")
			}
		}
		if env.Kube.InCluster && (env.Kube.Kubeconfig != "" || env.Kube.Context != "") {
			bad(at+".kube.in_cluster", "set either in_cluster or kubeconfig/context")
		}
		if env.Compose.Keep < 0 {
			bad(at+".compose.keep", "must not be negative")
		}
		for _, a := range env.Compose.Allow {
			if !slices.Contains(ComposeAllowances, a) {
				bad(at+".compose.allow", "%q is not something berth refuses (use %s)", a, strings.Join(ComposeAllowances, ", "))
			}
		}
		for _, p := range env.Projects {
			if !validProjectPattern(p) {
				bad(at+".projects", "%q is not a project path (group/app) or a group's projects (group/*)", p)
			}
		}
		if p := c.PortsOn; p != PortsOnProxy && p != PortsOnAnchor && p != PortsOnContainer {
			bad(at+".container.ports_on", "%q is not a place (use proxy, anchor or container)", p)
		}
		if c.Replicas < 1 {
			bad(at+".container.replicas", "must be 1 or more")
		}
		if c.PortsOn != PortsOnProxy {
			if c.Replicas > 1 {
				bad(at+".container.replicas", "replicas need ports_on = \"proxy\" (one name and port per container otherwise)")
			}
			if len(c.Hosts) > 0 {
				bad(at+".container.hosts", "hosts need ports_on = \"proxy\"")
			}
		}
		if t := c.TLS; t != TLSACME && t != TLSInternal && t != TLSOff {
			bad(at+".container.tls", "%q is not a TLS mode (use acme, internal or off)", t)
		}
		for _, h := range c.Hosts {
			if !hostRe.MatchString(h) {
				bad(at+".container.hosts", "%q is not a host name (app.example.com, *.example.com)", h)
			}
		}
		if c.DrainTimeout < 0 {
			bad(at+".container.drain_timeout", "must not be negative")
		}
	}
}

var (
	restartRe = regexp.MustCompile(`^(|no|always|unless-stopped|on-failure(:[0-9]+)?)$`)
	nameRe    = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	hostRe    = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
)

func validRestart(p string) bool { return restartRe.MatchString(p) }

// refPatternProblem says why a branch or tag pattern cannot match any ref
// name GitLab sends (the short name: main, v1.2.3), or "".
func refPatternProblem(pattern string) string {
	re, err := syntax.Parse("^(?:"+pattern+")$", syntax.Perl)
	if err != nil {
		return fmt.Sprintf("bad pattern %q: %v", pattern, err)
	}
	if strings.HasPrefix(pattern, "refs/") || strings.HasPrefix(pattern, "^refs/") {
		return fmt.Sprintf("pattern %q never matches: GitLab names refs without refs/heads/ or refs/tags/ (main, v1.2.3)", pattern)
	}
	if r := mustLiteral(re.Simplify()); r != "" {
		return fmt.Sprintf("pattern %q never matches: a git ref name cannot contain %s", pattern, r)
	}
	if matchesNothing(re.Simplify()) {
		return fmt.Sprintf("pattern %q matches nothing", pattern)
	}
	return ""
}

// mustLiteral finds a character a match needs that no ref name has (git
// check-ref-format: no space, ~ ^ : ? * [ \\ or control characters).
func mustLiteral(re *syntax.Regexp) string {
	switch re.Op {
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) {
				return fmt.Sprintf("%q", string(r))
			}
		}
	case syntax.OpConcat, syntax.OpCapture:
		for _, sub := range re.Sub {
			if r := mustLiteral(sub); r != "" {
				return r
			}
		}
	case syntax.OpPlus, syntax.OpRepeat:
		if re.Op == syntax.OpPlus || re.Min > 0 {
			return mustLiteral(re.Sub[0])
		}
	case syntax.OpAlternate:
		first := ""
		for _, sub := range re.Sub {
			r := mustLiteral(sub)
			if r == "" {
				return ""
			}
			first = r
		}
		return first
	}
	return ""
}

// matchesNothing says whether a pattern cannot match any string.
func matchesNothing(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpNoMatch:
		return true
	case syntax.OpCharClass:
		return len(re.Rune) == 0
	case syntax.OpConcat, syntax.OpCapture:
		consumed, ended := false, false
		for _, sub := range re.Sub {
			if matchesNothing(sub) {
				return true
			}
			switch sub.Op {
			case syntax.OpEndLine, syntax.OpEndText:
				ended = true
			case syntax.OpBeginLine, syntax.OpBeginText:
				if consumed {
					return true // ^ after characters
				}
			default:
				if consumes(sub) {
					if ended {
						return true // characters after $
					}
					consumed = true
				}
			}
		}
	}
	return false
}

// consumes says whether every match of re has at least one character.
func consumes(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpLiteral:
		return len(re.Rune) > 0
	case syntax.OpCharClass, syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return true
	case syntax.OpPlus:
		return consumes(re.Sub[0])
	case syntax.OpRepeat:
		return re.Min > 0 && consumes(re.Sub[0])
	case syntax.OpConcat, syntax.OpCapture:
		for _, sub := range re.Sub {
			if consumes(sub) {
				return true
			}
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var projectPathRe = regexp.MustCompile(`^[A-Za-z0-9_.][A-Za-z0-9_.-]*(/[A-Za-z0-9_.][A-Za-z0-9_.-]*)+$`)

func validProjectPattern(p string) bool {
	if group, ok := strings.CutSuffix(p, "/*"); ok {
		return projectPathRe.MatchString(group + "/x")
	}
	return projectPathRe.MatchString(p)
}

// ProjectAllowed says whether a project (full path) matches one of the
// environment's projects: an exact path, or "group/*" for every project
// below group, subgroups included. Paths compare as GitLab does, without
// case.
func ProjectAllowed(patterns []string, project string) bool {
	project = strings.ToLower(path.Clean(project))
	for _, p := range patterns {
		p = strings.ToLower(p)
		if group, ok := strings.CutSuffix(p, "/*"); ok {
			if strings.HasPrefix(project, group+"/") {
				return true
			}
			continue
		}
		if p == project {
			return true
		}
	}
	return false
}
