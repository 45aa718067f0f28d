// Package local is what `berth exec` needs to be its own GitLab: read
// .gitlab-ci.yml, pick the jobs that apply to a ref, and render for each the
// payload and stage scripts that GitLab and gitlab-runner would give berth.
// Anything the file says that this package does not understand is refused
// by name, never ignored.
package local

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// CIJob is one job of .gitlab-ci.yml, with the defaults of the file applied.
type CIJob struct {
	Name         string
	Stage        string
	Image        string
	Services     []Service
	Variables    []Var // the file's, then the job's
	BeforeScript []string
	Script       []string
	AfterScript  []string
	When         string // on_success (default), manual, always, never
	only, except *refFilter
	rules        []rule
	line         int
}

// Service is a job's service: an image and an optional alias.
type Service struct {
	Image, Alias string
}

// Var is a variable of the file or of a job, in order.
type Var struct{ Key, Value string }

// Pipeline is the parsed file: its stages in order and its jobs.
type Pipeline struct {
	Stages []string
	Jobs   []*CIJob
}

// The keywords berth exec understands; any other is refused.
var (
	topKeys = map[string]bool{"stages": true, "variables": true, "image": true, "services": true,
		"before_script": true, "after_script": true, "workflow": false}
	jobKeys = map[string]bool{"stage": true, "image": true, "services": true, "variables": true,
		"before_script": true, "script": true, "after_script": true, "only": true, "except": true,
		"rules": true, "when": true, "tags": true}
)

// Load reads and checks a .gitlab-ci.yml.
func Load(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse reads a .gitlab-ci.yml from data; path names it in errors.
func Parse(path string, data []byte) (*Pipeline, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: not a mapping of keywords and jobs", path)
	}
	root := resolve(doc.Content[0])
	p := &Pipeline{Stages: []string{".pre", "build", "test", "deploy", ".post"}}
	var defaults CIJob
	type pending struct {
		name string
		node *yaml.Node
	}
	var jobs []pending
	bad := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", path, n.Line, fmt.Sprintf(format, args...))
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		switch {
		case strings.HasPrefix(key, "."):
			continue // hidden jobs and anchors' homes: only YAML uses them here
		case topKeys[key]:
		case v.Kind == yaml.MappingNode && !isKnownGlobal(key):
			jobs = append(jobs, pending{key, v})
			continue
		default:
			return nil, bad(k, "berth exec does not support the keyword %q: run this pipeline on GitLab, or remove it to try the jobs locally", key)
		}
		var err error
		switch key {
		case "stages":
			p.Stages, err = stringList(v)
			p.Stages = append(append([]string{".pre"}, p.Stages...), ".post")
		case "variables":
			defaults.Variables, err = variables(v)
		case "image":
			defaults.Image, err = imageName(v)
		case "services":
			defaults.Services, err = services(v)
		case "before_script":
			defaults.BeforeScript, err = stringList(v)
		case "after_script":
			defaults.AfterScript, err = stringList(v)
		}
		if err != nil {
			return nil, bad(v, "%s: %v", key, err)
		}
	}
	for _, pj := range jobs {
		j, err := parseJob(path, pj.name, pj.node, &defaults)
		if err != nil {
			return nil, err
		}
		if !contains(p.Stages, j.Stage) {
			return nil, bad(pj.node, "job %s: stage %q is not in stages %v", j.Name, j.Stage, p.Stages[1:len(p.Stages)-1])
		}
		p.Jobs = append(p.Jobs, j)
	}
	// stage order, file order within a stage
	sort.SliceStable(p.Jobs, func(a, b int) bool { return indexOf(p.Stages, p.Jobs[a].Stage) < indexOf(p.Stages, p.Jobs[b].Stage) })
	return p, nil
}

// resolve follows YAML aliases and applies merge keys (<<: *anchor, as
// GitLab's templates use them): explicit keys win over merged ones.
func resolve(n *yaml.Node) *yaml.Node {
	switch n.Kind {
	case yaml.AliasNode:
		return resolve(n.Alias)
	case yaml.SequenceNode:
		c := *n
		c.Content = make([]*yaml.Node, len(n.Content))
		for i, e := range n.Content {
			c.Content[i] = resolve(e)
		}
		return &c
	case yaml.MappingNode:
		c := *n
		c.Content = nil
		seen := map[string]bool{}
		add := func(k, v *yaml.Node) {
			if !seen[k.Value] {
				seen[k.Value] = true
				c.Content = append(c.Content, k, resolve(v))
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != "<<" {
				add(n.Content[i], n.Content[i+1])
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != "<<" {
				continue
			}
			merged := resolve(n.Content[i+1])
			sources := []*yaml.Node{merged}
			if merged.Kind == yaml.SequenceNode {
				sources = merged.Content
			}
			for _, src := range sources {
				for j := 0; src.Kind == yaml.MappingNode && j+1 < len(src.Content); j += 2 {
					add(src.Content[j], src.Content[j+1])
				}
			}
		}
		return &c
	}
	return n
}

// isKnownGlobal is a GitLab keyword that is not a job, supported or not.
func isKnownGlobal(key string) bool {
	switch key {
	case "default", "include", "workflow", "cache", "pages":
		return true
	}
	return false
}

func parseJob(path, name string, n *yaml.Node, defaults *CIJob) (*CIJob, error) {
	j := &CIJob{Name: name, Stage: "test", Image: defaults.Image, Services: defaults.Services,
		BeforeScript: defaults.BeforeScript, AfterScript: defaults.AfterScript, When: "on_success", line: n.Line}
	j.Variables = append(j.Variables, defaults.Variables...)
	bad := func(at *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: job %s: %s", path, at.Line, name, fmt.Sprintf(format, args...))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !jobKeys[k.Value] {
			return nil, bad(k, "berth exec does not support the keyword %q: run this job on GitLab, or remove it to try the job locally", k.Value)
		}
		var err error
		switch k.Value {
		case "stage":
			j.Stage = v.Value
		case "image":
			j.Image, err = imageName(v)
		case "services":
			j.Services, err = services(v)
		case "variables":
			var vs []Var
			vs, err = variables(v)
			j.Variables = append(j.Variables, vs...)
		case "before_script":
			j.BeforeScript, err = stringList(v)
		case "script":
			j.Script, err = stringList(v)
		case "after_script":
			j.AfterScript, err = stringList(v)
		case "only":
			j.only, err = parseRefFilter(v)
		case "except":
			j.except, err = parseRefFilter(v)
		case "rules":
			j.rules, err = parseRules(v)
		case "when":
			j.When = v.Value
			if !contains([]string{"on_success", "manual", "always", "never"}, j.When) {
				err = fmt.Errorf("when: %q is not on_success, manual, always or never", j.When)
			}
		case "tags": // they pick a runner; locally, berth is the runner
		}
		if err != nil {
			return nil, bad(v, "%v", err)
		}
	}
	if len(j.Script) == 0 {
		return nil, bad(n, "script is missing (every job needs one)")
	}
	if j.rules != nil && (j.only != nil || j.except != nil) {
		return nil, bad(n, "rules cannot be used with only or except")
	}
	return j, nil
}

// stringList reads a string or a list of strings (nested lists are
// flattened, as GitLab does for script).
func stringList(n *yaml.Node) ([]string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		return []string{n.Value}, nil
	case yaml.SequenceNode:
		var out []string
		for _, c := range n.Content {
			s, err := stringList(c)
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		}
		return out, nil
	case yaml.AliasNode:
		return stringList(n.Alias)
	}
	return nil, fmt.Errorf("want a string or a list of strings (quote a line that holds \": \")")
}

func variables(n *yaml.Node) ([]Var, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("want a mapping of names to values")
	}
	var out []Var
	for i := 0; i+1 < len(n.Content); i += 2 {
		v := n.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("variable %s: berth exec supports plain values only (no value/description/options)", n.Content[i].Value)
		}
		out = append(out, Var{n.Content[i].Value, v.Value})
	}
	return out, nil
}

func imageName(n *yaml.Node) (string, error) {
	if n.Kind == yaml.ScalarNode {
		return n.Value, nil
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != "name" {
				return "", fmt.Errorf("image: berth exec supports name only, not %q", n.Content[i].Value)
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			return n.Content[i+1].Value, nil
		}
	}
	return "", fmt.Errorf("image: want a name")
}

func services(n *yaml.Node) ([]Service, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("services: want a list")
	}
	var out []Service
	for _, c := range n.Content {
		switch c.Kind {
		case yaml.ScalarNode:
			out = append(out, Service{Image: c.Value})
		case yaml.MappingNode:
			var s Service
			for i := 0; i+1 < len(c.Content); i += 2 {
				switch c.Content[i].Value {
				case "name":
					s.Image = c.Content[i+1].Value
				case "alias":
					s.Alias = c.Content[i+1].Value
				default:
					return nil, fmt.Errorf("services: berth exec supports name and alias, not %q", c.Content[i].Value)
				}
			}
			out = append(out, s)
		default:
			return nil, fmt.Errorf("services: want names or {name, alias}")
		}
	}
	return out, nil
}

func contains(list []string, s string) bool { return indexOf(list, s) >= 0 }

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}
