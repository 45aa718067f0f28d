package settings

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
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
	// PortsOn is where the ports are published: "anchor" (a NAME-net
	// container that the app's containers join, so a switch does not
	// re-plumb the port) or "container" (the app's container itself).
	PortsOn string `toml:"ports_on"`
}

// Values of ContainerSpec.PortsOn.
const (
	PortsOnAnchor    = "anchor"
	PortsOnContainer = "container"
)

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
			c.PortsOn = PortsOnAnchor
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

func (s *Settings) validateDeploy() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for _, name := range sortedKeys(s.Stages) {
		switch s.Stages[name] {
		case ActionScript, ActionDeploy, ActionRelease:
		default:
			bad("stages."+name, "%q is not an action (use script, deploy or release)", s.Stages[name])
		}
	}
	for i, f := range s.Flows {
		field := fmt.Sprintf("flows[%d] (%s)", i, f.Name)
		if (f.Branch == "") == (f.Tag == "") {
			bad(field, "set exactly one of branch and tag")
		}
		for _, re := range []string{f.Branch, f.Tag} {
			if _, err := regexp.Compile("^(?:" + re + ")$"); err != nil {
				bad(field, "bad pattern %q: %v", re, err)
			}
		}
		if f.ImageTag == "" {
			bad(field, "image_tag is empty (use a literal tag or \"{ref}\")")
		}
		if _, ok := s.Environments[f.Environment]; f.Environment != "" && !ok {
			bad(field, "environment %q is not defined under [environments]", f.Environment)
		}
	}
	for _, name := range sortedKeys(s.Environments) {
		env := s.Environments[name]
		switch env.Driver {
		case DriverContainer, DriverCompose, DriverKube:
		default:
			bad("environments."+name+".driver", "%q is not a driver (use container, compose or kube)", env.Driver)
		}
		if env.Container.Keep < 0 {
			bad("environments."+name+".container.keep", "must not be negative")
		}
		if env.Kube.InCluster && (env.Kube.Kubeconfig != "" || env.Kube.Context != "") {
			bad("environments."+name+".kube.in_cluster", "set either in_cluster or kubeconfig/context")
		}
		if env.Compose.Keep < 0 {
			bad("environments."+name+".compose.keep", "must not be negative")
		}
		for _, a := range env.Compose.Allow {
			if !slices.Contains(ComposeAllowances, a) {
				bad("environments."+name+".compose.allow", "%q is not something berth refuses (use %s)", a, strings.Join(ComposeAllowances, ", "))
			}
		}
		for _, p := range env.Projects {
			if !validProjectPattern(p) {
				bad("environments."+name+".projects", "%q is not a project path (group/app) or a group's projects (group/*)", p)
			}
		}
		if p := env.Container.PortsOn; p != PortsOnAnchor && p != PortsOnContainer {
			bad("environments."+name+".container.ports_on", "%q is not a place (use anchor or container)", p)
		}
	}
	return errors.Join(errs...)
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
