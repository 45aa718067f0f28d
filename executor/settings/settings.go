// Package settings reads the operator's berth.toml once into a struct. Job
// variables never reach it: only the runner host's files and environment do.
package settings

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// DefaultPath is where the runner host keeps berth.toml when neither
// --config nor BERTH_CONFIG names one.
const DefaultPath = "/etc/gitlab-runner/berth.toml"

// Pull policies for job and service images.
const (
	PullAlways       = "always"
	PullIfNotPresent = "if-not-present"
	PullNever        = "never"
)

// Settings is the whole operator configuration.
type Settings struct {
	// LogLevel of the operator log on stderr. The runner copies a run
	// stage's stderr into the job log, so the default stays quiet.
	LogLevel string `toml:"log_level"`
	// LogFile, when set, takes the operator log instead of stderr.
	LogFile string `toml:"log_file"`
	// BuildsDir and CacheDir on the runner host; each job gets its own
	// directory under BuildsDir, bind-mounted at the same path.
	BuildsDir string `toml:"builds_dir"`
	CacheDir  string `toml:"cache_dir"`
	// DockerHost overrides DOCKER_HOST for the job engine.
	DockerHost string        `toml:"docker_host"`
	Job        JobContainers `toml:"job"`

	// Native deploy and release (stages, flows, environments).
	Registry     Registry               `toml:"registry"`
	Build        Build                  `toml:"build"`
	Stages       map[string]string      `toml:"stages"`
	Flows        []Flow                 `toml:"flows"`
	Environments map[string]Environment `toml:"environments"`
	Proxy        Proxy                  `toml:"proxy"`
}

// JobContainers is the [job] table: how job and service containers are
// made.
type JobContainers struct {
	// DefaultImage runs jobs that name no image.
	DefaultImage string `toml:"default_image"`
	// PullPolicy unless the job sets pull_policy itself.
	PullPolicy string `toml:"pull_policy"`
	// AllowedPullPolicies are the policies a job may ask for.
	AllowedPullPolicies []string `toml:"allowed_pull_policies"`
	// Volumes are extra host mounts, "HOST:CONTAINER[:ro]", the only ones
	// beyond the builds and cache dirs.
	Volumes []string `toml:"volumes"`
	// StopGrace is how long a cancelled script has between TERM and KILL.
	StopGrace Duration `toml:"stop_grace"`
	// ServiceWait bounds the wait for services' exposed ports.
	ServiceWait Duration `toml:"service_wait"`
	// Memory limit in bytes for each container (0: none) and CPUs (0: none).
	Memory int64   `toml:"memory"`
	CPUs   float64 `toml:"cpus"`
	// HelperImage runs every stage that is not the job's own script:
	// get_sources with its hooks, caches, artifacts, file variables. It
	// needs git and bash; the runner's helper commands come from
	// RunnerBinary.
	HelperImage string `toml:"helper_image"`
	// RunnerBinary is a static gitlab-runner on this host, mounted into the
	// helper container as gitlab-runner: "" finds the runner that started
	// berth, RunnerBinaryImage uses the image's own gitlab-runner or
	// gitlab-runner-helper.
	RunnerBinary string `toml:"runner_binary"`
	// HelperNetwork is the Docker network of the helper container; "" is the
	// job's own network, as the Docker executor does.
	HelperNetwork string `toml:"helper_network"`
	// HelperSpares is how many network namespaces berth keeps ready for
	// the helpers of native stages (executor/spares.go); 0 makes each
	// helper its own, ~0.3 s slower.
	HelperSpares int `toml:"helper_spares"`
}

// MaxHelperSpares bounds job.helper_spares: each is an idle container.
const MaxHelperSpares = 16

// RunnerBinaryImage says the helper image brings its own runner binary.
const RunnerBinaryImage = "image"

// DefaultHelperImage is GitLab's helper image for this machine's
// architecture: git, git-lfs and bash. berth mounts the runner's own binary
// into it, so its version need not match the runner's.
func DefaultHelperImage() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "arm64", "arm": "arm", "s390x": "s390x", "ppc64le": "ppc64le", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:" + arch + "-v18.5.0"
}

// Defaults is the configuration used when no file exists; a file overrides
// what it sets.
func Defaults() Settings {
	s := Settings{
		LogLevel:  "warning",
		BuildsDir: "/var/lib/berth/builds",
		CacheDir:  "/var/lib/berth/cache",
		Job: JobContainers{
			DefaultImage:        "",
			PullPolicy:          PullIfNotPresent,
			AllowedPullPolicies: []string{PullAlways, PullIfNotPresent},
			StopGrace:           Duration(5 * time.Second),
			ServiceWait:         Duration(30 * time.Second),
			HelperImage:         DefaultHelperImage(),
			HelperSpares:        2,
		},
		Proxy: Proxy{Image: "caddy:2", Name: "berth-proxy", Network: "berth-proxy", HTTPPort: 80, HTTPSPort: 443, Manage: true},
	}
	s.applyDeployDefaults()
	return s
}

// Duration is a time.Duration written as "5s" in TOML.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration (use 30s, 5m): %q", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// FieldError is a setting that cannot work: the key (dotted, flows[N] for
// the N-th flow) and why. Decode adds the file and line.
type FieldError struct {
	Field, Msg string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// problems collects FieldErrors.
type problems []error

func (p *problems) bad(field, format string, args ...any) {
	*p = append(*p, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks values that TOML types alone cannot.
func (s *Settings) Validate() error {
	var errs problems
	bad := errs.bad
	switch strings.ToLower(s.LogLevel) {
	case "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace":
	default:
		bad("log_level", "%q is not a level (use error, warning, info or debug)", s.LogLevel)
	}
	for field, dir := range map[string]string{"builds_dir": s.BuildsDir, "cache_dir": s.CacheDir} {
		if !filepath.IsAbs(dir) {
			bad(field, "%q must be an absolute path on the runner host", dir)
		}
	}
	if !validPolicy(s.Job.PullPolicy) {
		bad("job.pull_policy", "%q is not a pull policy (use always, if-not-present or never)", s.Job.PullPolicy)
	}
	for _, p := range s.Job.AllowedPullPolicies {
		if !validPolicy(p) {
			bad("job.allowed_pull_policies", "%q is not a pull policy (use always, if-not-present or never)", p)
		}
	}
	for _, v := range s.Job.Volumes {
		if _, err := ParseVolume(v); err != nil {
			bad("job.volumes", "%v", err)
		}
	}
	if s.Job.StopGrace < 0 {
		bad("job.stop_grace", "must not be negative")
	}
	if s.Job.ServiceWait < 0 {
		bad("job.service_wait", "must not be negative")
	}
	if s.Job.Memory < 0 {
		bad("job.memory", "must not be negative")
	}
	if s.Job.CPUs < 0 {
		bad("job.cpus", "must not be negative")
	}
	if s.Job.HelperImage == "" {
		bad("job.helper_image", "must name an image with git and bash (default %s)", DefaultHelperImage())
	}
	if s.Job.HelperSpares < 0 || s.Job.HelperSpares > MaxHelperSpares {
		bad("job.helper_spares", "must be between 0 (none) and %d", MaxHelperSpares)
	}
	if r := s.Job.RunnerBinary; r != "" && r != RunnerBinaryImage && !filepath.IsAbs(r) {
		bad("job.runner_binary", "%q must be an absolute path to a static gitlab-runner, %q, or empty (the runner that started berth)", r, RunnerBinaryImage)
	}
	s.validateDeploy(&errs)
	return errors.Join(errs...)
}

func validPolicy(p string) bool {
	return p == PullAlways || p == PullIfNotPresent || p == PullNever
}

// Volume is one operator-allowed host mount.
type Volume struct {
	Host, Container string
	ReadOnly        bool
}

// ParseVolume reads "HOST:CONTAINER[:ro|rw]" with absolute paths.
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Volume{}, fmt.Errorf("%q: use HOST:CONTAINER or HOST:CONTAINER:ro", s)
	}
	v := Volume{Host: parts[0], Container: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return Volume{}, fmt.Errorf("%q: mode must be ro or rw", s)
		}
	}
	if !filepath.IsAbs(v.Host) || !filepath.IsAbs(v.Container) {
		return Volume{}, fmt.Errorf("%q: both paths must be absolute", s)
	}
	return v, nil
}

// Source says where the settings came from, for `berth check` and errors.
type Source struct {
	Path   string // empty when built-in defaults are used
	Reason string // "--config", "BERTH_CONFIG", "default path" or "built-in defaults"
}

// Locate picks the file: --config, then BERTH_CONFIG, then DefaultPath.
// A path named explicitly must exist; the default path may be absent.
func Locate(flagPath string, getenv func(string) string) (Source, error) {
	switch {
	case flagPath != "":
		return Source{Path: flagPath, Reason: "--config"}, mustExist(flagPath, "--config")
	case getenv("BERTH_CONFIG") != "":
		p := getenv("BERTH_CONFIG")
		return Source{Path: p, Reason: "BERTH_CONFIG"}, mustExist(p, "BERTH_CONFIG")
	}
	if _, err := os.Stat(DefaultPath); err == nil {
		return Source{Path: DefaultPath, Reason: "default path"}, nil
	}
	return Source{Reason: "built-in defaults"}, nil
}

func mustExist(path, via string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("config file %s (from %s): %w", path, via, err)
	}
	return nil
}

// Load locates, reads and validates the settings.
func Load(flagPath string, getenv func(string) string) (*Settings, Source, error) {
	src, err := Locate(flagPath, getenv)
	if err != nil {
		return nil, src, err
	}
	s := Defaults()
	if src.Path == "" {
		return &s, src, nil
	}
	data, err := os.ReadFile(src.Path)
	if err != nil {
		return nil, src, fmt.Errorf("read config %s: %w", src.Path, err)
	}
	if err := Decode(src.Path, data, &s); err != nil {
		return nil, src, err
	}
	return &s, src, nil
}

// Masked stands for a secret in what berth prints.
const Masked = "[MASKED]"

// Redacted is a copy of s without secrets, for `berth check`: the registry
// password, the containers' env values and the build args.
func (s *Settings) Redacted() Settings {
	out := *s
	if out.Registry.Password != "" {
		out.Registry.Password = Masked
	}
	if len(s.Build.Args) > 0 {
		out.Build.Args = map[string]string{}
		for k := range s.Build.Args {
			out.Build.Args[k] = Masked
		}
	}
	out.Environments = map[string]Environment{}
	for name, env := range s.Environments {
		env.Container.Env = append([]string(nil), env.Container.Env...)
		for i, kv := range env.Container.Env {
			k, _, _ := strings.Cut(kv, "=")
			env.Container.Env[i] = k + "=" + Masked
		}
		out.Environments[name] = env
	}
	return out
}

// Warnings are settings that are valid but likely not what the operator
// means.
func (s *Settings) Warnings() []string {
	var out []string
	for _, name := range sortedKeys(s.Environments) {
		if env := s.Environments[name]; env.Manual && !env.Protected {
			out = append(out, fmt.Sprintf("environment %s is manual but not protected: manual guards against accidents only (a job can set CI_JOB_MANUAL itself); set protected = true, with GitLab's protected tags or branches, to make it a boundary", name))
		}
	}
	return out
}
