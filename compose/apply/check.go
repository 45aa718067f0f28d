package apply

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"

	"github.com/berthci/berth/compose"
)

// A compose file from the checkout is the job author's: before berth
// brings it up on a target, it must not reach the target host (privileges,
// host namespaces, devices, host paths, the Docker socket), read files of
// the runner host, or pass for what berth made (its names and labels).
// The environment's compose.allow lets the operator allow each of these by
// name (settings.ComposeAllowances).

// refusal is one thing the compose file does that is not allowed.
type refusal struct {
	where, what, key string
}

// Refused is the job's fault: it names the file's service, the key and
// the setting that would allow it.
type Refused struct {
	Env      string
	refusals []refusal
}

func (r *Refused) Error() string {
	var b strings.Builder
	b.WriteString("the compose file asks for what berth does not allow on the target:")
	for _, f := range r.refusals {
		fmt.Fprintf(&b, "\n  %s: %s (allow it with environments.%s.compose.allow = [%q] in berth.toml)", f.where, f.what, r.Env, f.key)
	}
	return b.String()
}

// Check refuses what the loaded project must not do (chosen are the
// services that take berth's image).
func Check(p *types.Project, req compose.Request, chosen []string) error {
	c, err := newChecker(req)
	if err != nil {
		return err
	}
	c.check(p, chosen)
	return c.result(req.Env)
}

func newChecker(req compose.Request) (*checker, error) {
	root, err := filepath.EvalSymlinks(req.WorkingDir)
	if err != nil {
		return nil, fmt.Errorf("the compose project's directory %s: %w", req.WorkingDir, err)
	}
	return &checker{allow: req.Allow, root: root, dir: filepath.Clean(req.WorkingDir), reserved: req.Reserved, project: req.Project}, nil
}

// inFiles refuses compose files of the checkout that lead outside it
// (files the operator named by absolute path are theirs).
func (c *checker) inFiles(files []string) error {
	for _, f := range files {
		if strings.HasPrefix(f, c.dir+string(filepath.Separator)) || !filepath.IsAbs(f) {
			if !c.inside(c.root, f) {
				c.refuse(filepath.Base(f), "host_files", "the compose file is a link to a file outside the project's checkout")
			}
		}
	}
	return nil
}

type checker struct {
	allow    []string
	root     string // the project dir, symlinks resolved
	dir      string // and as named
	reserved []string
	project  string
	found    []refusal
}

func (c *checker) refuse(where, key, format string, args ...any) {
	if slices.Contains(c.allow, key) {
		return
	}
	c.found = append(c.found, refusal{where: where, what: fmt.Sprintf(format, args...), key: key})
}

func (c *checker) result(env string) error {
	if len(c.found) == 0 {
		return nil
	}
	return &Refused{Env: env, refusals: c.found}
}

// inside says whether path (relative to base) stays in the project dir
// once every symlink is resolved. A path that does not exist yet cannot
// leak anything and counts as inside when its name does.
func (c *checker) inside(base, path string) bool {
	if strings.Contains(path, "$") {
		return false // interpolated: where it leads is not known before loading
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(base, path)
	}
	resolved, err := filepath.EvalSymlinks(path)
	if errors.Is(err, os.ErrNotExist) {
		resolved = filepath.Clean(path)
	} else if err != nil {
		return false
	}
	rel, err := filepath.Rel(c.root, resolved)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// preScan reads the compose files as YAML, before compose loads them (and
// reads what they name): files outside the project dir are refused, so
// loading reads none of the runner host's files. Included and extended
// files are scanned in turn.
func (c *checker) preScan(files []string, workingDir string) error {
	seen := map[string]bool{}
	var scan func(file string, depth int) error
	scan = func(file string, depth int) error {
		if seen[file] || depth > 8 {
			return nil
		}
		seen[file] = true
		data, err := os.ReadFile(file)
		if err != nil {
			return nil // compose reports a missing file itself
		}
		var doc map[string]any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return nil // and a broken one
		}
		base := filepath.Dir(file)
		name := filepath.Base(file)
		check := func(where, path string) bool {
			if c.inside(base, path) {
				return true
			}
			c.refuse(name+": "+where, "host_files", "%q is outside the project's checkout", path)
			return false
		}
		for _, inc := range asList(doc["include"]) {
			paths := asList(inc)
			if m, ok := inc.(map[string]any); ok {
				paths = asList(m["path"])
				for _, e := range asList(m["env_file"]) {
					check("include env_file", str(e))
				}
				if d := str(m["project_directory"]); d != "" {
					check("include project_directory", d)
				}
			}
			for _, p := range paths {
				if check("include", str(p)) {
					if err := scan(resolve(base, str(p)), depth+1); err != nil {
						return err
					}
				}
			}
		}
		services, _ := doc["services"].(map[string]any)
		for _, svcName := range sortedKeys(services) {
			svc, _ := services[svcName].(map[string]any)
			where := "service " + svcName
			for _, e := range asList(svc["env_file"]) {
				if m, ok := e.(map[string]any); ok {
					e = m["path"]
				}
				check(where+" env_file", str(e))
			}
			for _, l := range asList(svc["label_file"]) {
				check(where+" label_file", str(l))
			}
			if ext, ok := svc["extends"].(map[string]any); ok {
				if f := str(ext["file"]); f != "" && check(where+" extends", f) {
					if err := scan(resolve(base, f), depth+1); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if !c.inside(workingDir, ".env") {
		c.refuse(".env", "host_files", "it is a link to a file outside the project's checkout")
	}
	for _, f := range files {
		if err := scan(f, 0); err != nil {
			return err
		}
	}
	return nil
}

func resolve(base, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

func asList(v any) []any {
	switch t := v.(type) {
	case nil:
		return nil
	case []any:
		return t
	default:
		return []any{t}
	}
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var dockerSocket = regexp.MustCompile(`(^|/)docker\.sock$|^/var/run/?$|^/run/?$|^/var/run/docker|^/run/docker`)

// check looks at the loaded project: each service's privileges,
// namespaces, devices, mounts, names and labels, and the project's
// networks, volumes, secrets and configs.
func (c *checker) check(p *types.Project, chosen []string) {
	for _, name := range sortedKeys(p.Services) {
		s := p.Services[name]
		where := "service " + name
		if s.Privileged {
			c.refuse(where, "privileged", "privileged: true")
		}
		if len(s.CapAdd) > 0 {
			c.refuse(where, "cap_add", "cap_add: %s", strings.Join(s.CapAdd, ", "))
		}
		if len(s.Devices) > 0 || len(s.DeviceCgroupRules) > 0 {
			c.refuse(where, "devices", "devices or device_cgroup_rules")
		}
		for key, mode := range map[string]string{"network_mode": s.NetworkMode, "pid": s.Pid, "ipc": s.Ipc, "uts": s.Uts, "userns_mode": s.UserNSMode, "cgroup": s.Cgroup} {
			if mode == "host" || strings.HasPrefix(mode, "container:") {
				c.refuse(where, "host_namespaces", "%s: %s", key, mode)
			}
		}
		for _, vf := range s.VolumesFrom {
			if strings.HasPrefix(vf, "container:") {
				c.refuse(where, "host_namespaces", "volumes_from: %s", vf)
			}
		}
		if s.CgroupParent != "" {
			c.refuse(where, "host_namespaces", "cgroup_parent: %s", s.CgroupParent)
		}
		if len(s.SecurityOpt) > 0 {
			c.refuse(where, "security_opt", "security_opt: %s", strings.Join(s.SecurityOpt, ", "))
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if dockerSocket.MatchString(v.Source) {
				c.refuse(where, "docker_socket", "the Docker socket (%s) as a volume", v.Source)
			} else {
				c.refuse(where, "bind_mounts", "the host path %s as a volume", v.Source)
			}
		}
		if s.ContainerName != "" && c.reservedName(s.ContainerName) {
			c.refuse(where, "names", "container_name: %s, a name berth uses", s.ContainerName)
		}
		c.labels(where, s.Labels)
		if s.Build != nil && !slices.Contains(chosen, name) {
			c.build(where, s.Build, p.WorkingDir)
		}
	}
	for _, name := range sortedKeys(p.Networks) {
		n := p.Networks[name]
		if c.reservedName(n.Name) {
			c.refuse("network "+name, "names", "name: %s, a network berth uses", n.Name)
		}
		c.labels("network "+name, n.Labels)
	}
	for _, name := range sortedKeys(p.Volumes) {
		v := p.Volumes[name]
		if c.reservedName(v.Name) {
			c.refuse("volume "+name, "names", "name: %s, a volume berth uses", v.Name)
		}
		if v.DriverOpts["device"] != "" || strings.Contains(v.DriverOpts["o"], "bind") {
			c.refuse("volume "+name, "bind_mounts", "driver_opts that mount the host path %s", v.DriverOpts["device"])
		}
		c.labels("volume "+name, v.Labels)
	}
	files := func(kind string, objs map[string]types.FileObjectConfig) {
		for _, name := range sortedKeys(objs) {
			if f := objs[name].File; f != "" {
				if c.inside(p.WorkingDir, f) {
					c.refuse(kind+" "+name, "bind_mounts", "file: %s, mounted from the host", f)
				} else {
					c.refuse(kind+" "+name, "host_files", "file: %s, outside the project's checkout", f)
				}
			}
		}
	}
	secrets := map[string]types.FileObjectConfig{}
	for k, v := range p.Secrets {
		secrets[k] = types.FileObjectConfig(v)
	}
	configs := map[string]types.FileObjectConfig{}
	for k, v := range p.Configs {
		configs[k] = types.FileObjectConfig(v)
	}
	files("secret", secrets)
	files("config", configs)
}

// build checks a service that compose would build on the target: its
// context and Dockerfile stay in the checkout, and it gets none of the
// runner host's secrets, ssh agent or privileges.
func (c *checker) build(where string, b *types.BuildConfig, dir string) {
	where += " build"
	if b.Context != "" && !strings.Contains(b.Context, "://") && !c.inside(dir, b.Context) {
		c.refuse(where, "host_files", "context %s is outside the project's checkout", b.Context)
	}
	if b.Dockerfile != "" && c.inside(dir, b.Context) && !c.inside(resolve(dir, b.Context), b.Dockerfile) {
		c.refuse(where, "host_files", "dockerfile %s is outside the project's checkout", b.Dockerfile)
	}
	for name, ctx := range b.AdditionalContexts {
		if !strings.Contains(ctx, "://") && !strings.HasPrefix(ctx, "service:") && !c.inside(dir, ctx) {
			c.refuse(where, "host_files", "additional context %s (%s) is outside the project's checkout", name, ctx)
		}
	}
	if len(b.SSH) > 0 {
		c.refuse(where, "host_files", "ssh: the runner host's ssh agent or keys")
	}
	if len(b.Secrets) > 0 {
		c.refuse(where, "host_files", "secrets from the runner host")
	}
	if b.Privileged || len(b.Entitlements) > 0 {
		c.refuse(where, "privileged", "a privileged build")
	}
	if b.Network == "host" {
		c.refuse(where, "host_namespaces", "network: host")
	}
}

func (c *checker) labels(where string, l types.Labels) {
	for _, k := range sortedKeys(l) {
		if strings.HasPrefix(k, "berth.") {
			c.refuse(where, "berth_labels", "label %s, which berth writes itself", k)
		}
	}
}

// reservedName says whether a container, network or volume name is one
// berth uses: berth-*, or an environment's container and its kept ones.
// The project's own names (project_*, project-*) are the operator's.
func (c *checker) reservedName(name string) bool {
	name = strings.TrimPrefix(name, "/")
	if p := c.project; p != "" && (name == p || strings.HasPrefix(name, p+"_") || strings.HasPrefix(name, p+"-")) {
		return false
	}
	if strings.HasPrefix(name, "berth-") || strings.HasPrefix(name, "berth.") {
		return true
	}
	for _, r := range c.reserved {
		if name == r || strings.HasPrefix(name, r+"-") {
			return true
		}
	}
	return false
}
