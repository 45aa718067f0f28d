// Package local is what `berth exec` needs to be its own GitLab: read
// .gitlab-ci.yml as GitLab does (includes, extends, default, !reference,
// rules, parallel), plan the jobs of a ref, and render for each the payload
// and stage scripts that GitLab and gitlab-runner would give berth.
// Anything that would change what a job does and that this package cannot
// do is refused by name and line, never ignored.
package local

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// CIJob is one job of the pipeline, with extends, default and the file's
// variables applied.
type CIJob struct {
	Name              string
	Stage             string
	Image             string
	Entrypoint        []string // image: entrypoint
	Services          []Service
	Variables         []Var // the file's, then the job's
	BeforeScript      []string
	Script            []string
	AfterScript       []string
	When              string // on_success (default), manual, always, on_failure, delayed, never
	AllowFailure      allowFailure
	Needs             []Need // nil: the stages before; empty: none
	Dependencies      []string
	HasDeps           bool // dependencies given ([] means none)
	Artifacts         *Artifacts
	Cache             []Cache
	Timeout           time.Duration
	Retry             int
	Environment       string
	Trigger           bool     // a trigger job: GitLab starts another pipeline
	Notes             []string // what berth exec does not do for this job
	Parallel          *ParallelIndex
	only, except      *refFilter
	rules             []rule
	allowFailureGiven bool
	line              int
	file              string
}

// allowFailure is allow_failure: true, or with the exit codes it allows.
type allowFailure struct {
	allowed   bool
	exitCodes []int
}

// Allowed says whether a failure with code does not fail the pipeline.
func (a allowFailure) Allowed(code int) bool {
	if !a.allowed {
		return false
	}
	if len(a.exitCodes) == 0 {
		return true
	}
	for _, c := range a.exitCodes {
		if c == code {
			return true
		}
	}
	return false
}

// Codes are the exit codes it allows; none: any.
func (a allowFailure) Codes() []int { return a.exitCodes }

// Need is one entry of needs.
type Need struct {
	Job       string
	Artifacts bool
	Optional  bool
}

// Artifacts are what a job hands later jobs.
type Artifacts struct {
	Paths     []string
	Exclude   []string
	Untracked bool
	When      string // on_success (default), on_failure, always
	Dotenv    []string
}

// Cache is one cache of a job.
type Cache struct {
	Key          string
	KeyFiles     []string
	KeyPrefix    string
	Paths        []string
	Untracked    bool
	Policy       string // pull-push (default), pull, push
	When         string // on_success (default), on_failure, always
	FallbackKeys []string
}

// ParallelIndex is a job's place among its parallel copies.
type ParallelIndex struct {
	Base         string
	Index, Total int
}

// Service is a job's service, as the payload carries it.
type Service struct {
	Image, Alias        string
	Entrypoint, Command []string
	Variables           []Var
	PullPolicy          []string
}

// Var is a variable of the file or of a job, in order.
type Var struct{ Key, Value string }

// Pipeline is the parsed configuration: its stages in order, its jobs, and
// the workflow that decides whether it runs.
type Pipeline struct {
	Stages    []string
	Jobs      []*CIJob
	Variables []Var
	workflow  []rule
	File      string
}

// Keywords of a job: what berth exec does, and what does not change what
// a job does here (accepted silently).
var (
	jobKeys = map[string]bool{"stage": true, "image": true, "services": true, "variables": true, "before_script": true,
		"script": true, "after_script": true, "only": true, "except": true, "rules": true, "when": true, "tags": true,
		"extends": true, "allow_failure": true, "needs": true, "dependencies": true, "artifacts": true, "cache": true,
		"parallel": true, "timeout": true, "retry": true, "environment": true, "resource_group": true,
		"interruptible": true, "coverage": true, "start_in": true, "inherit": true, "trigger": true, "release": true,
		"pages": true, "id_tokens": true, "secrets": true, "hooks": true, "dast_configuration": true,
		"identity": true, "manual_confirmation": true, "publish": true, "run": false, "inputs": false}
	defaultKeys = []string{"after_script", "artifacts", "before_script", "cache", "hooks", "id_tokens", "image",
		"interruptible", "retry", "services", "tags", "timeout"}
)

// Load reads a repository's .gitlab-ci.yml (file, relative to repo) for the
// context's ref and variables.
func Load(repo, file string, ctx *Context) (*Pipeline, error) {
	if ctx.Repo == "" {
		ctx.Repo = repo
	}
	l := &loader{repo: repo, ctx: ctx}
	d := newDoc()
	if err := l.load(d, file, nil, 0); err != nil {
		return nil, err
	}
	return build(d, file, ctx)
}

// build turns the assembled configuration into jobs.
func build(d *doc, file string, ctx *Context) (*Pipeline, error) {
	p := &Pipeline{Stages: []string{".pre", "build", "test", "deploy", ".post"}, File: file}
	bad := func(key string, n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", d.files[key], n.Line, fmt.Sprintf(format, args...))
	}
	// !reference first: every key may hold one
	for _, k := range d.keys {
		r, err := d.references(d.nodes[k], 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", d.files[k], k, err)
		}
		d.nodes[k] = r
	}
	defaults := map[string]*yaml.Node{}
	var jobNames []string
	for _, k := range d.keys {
		v := d.nodes[k]
		var err error
		switch k {
		case "stages":
			var st []string
			if st, err = stringList(v); err == nil {
				p.Stages = append(append([]string{".pre"}, st...), ".post")
			}
		case "variables":
			p.Variables, err = variables(v)
		case "workflow":
			if rn, ok := lookup(v, "rules"); ok {
				p.workflow, err = parseRules(rn)
			}
		case "default":
			if v.Kind != yaml.MappingNode {
				return nil, bad(k, v, "default: want a mapping")
			}
			for i := 0; i+1 < len(v.Content); i += 2 {
				if !contains(defaultKeys, v.Content[i].Value) {
					return nil, bad(k, v.Content[i], "default: berth exec does not know %q", v.Content[i].Value)
				}
				defaults[v.Content[i].Value] = v.Content[i+1]
			}
		case "image", "services", "before_script", "after_script", "cache": // the old global defaults
			if _, set := defaults[k]; !set {
				defaults[k] = v
			}
		case "include", "spec":
		default:
			if strings.HasPrefix(k, ".") {
				continue // hidden: a template for extends and !reference
			}
			if v.Kind != yaml.MappingNode {
				return nil, bad(k, v, "berth exec does not support the keyword %q: run this pipeline on GitLab, or remove it to try the jobs locally", k)
			}
			jobNames = append(jobNames, k)
		}
		if err != nil {
			return nil, bad(k, v, "%s: %v", k, err)
		}
	}
	for _, name := range jobNames {
		n, err := d.extended(name, nil)
		if err != nil {
			return nil, err
		}
		jobs, err := parseJob(d.files[name], name, n, defaults, p.Variables, ctx)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			if !contains(p.Stages, j.Stage) {
				return nil, bad(name, n, "job %s: stage %q is not in stages %v", j.Name, j.Stage, p.Stages[1:len(p.Stages)-1])
			}
			p.Jobs = append(p.Jobs, j)
		}
	}
	// stage order, file order within a stage
	sort.SliceStable(p.Jobs, func(a, b int) bool { return indexOf(p.Stages, p.Jobs[a].Stage) < indexOf(p.Stages, p.Jobs[b].Stage) })
	return p, nil
}

// extended is job name with what it extends merged under it: templates
// first, in order, deep-merged; the job's own keys win.
func (d *doc) extended(name string, seen []string) (*yaml.Node, error) {
	if contains(seen, name) {
		return nil, fmt.Errorf("%s: extends: %s extends itself (%s)", d.files[name], name, strings.Join(append(seen, name), " → "))
	}
	if len(seen) > 11 {
		return nil, fmt.Errorf("%s: extends: %s nests more than 11 levels", d.files[name], name)
	}
	n, ok := d.nodes[name]
	if !ok {
		return nil, fmt.Errorf("extends: %q is not a job or template of the configuration", name)
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: %s is not a mapping", d.files[name], n.Line, name)
	}
	ext, ok := lookup(n, "extends")
	if !ok {
		return n, nil
	}
	bases, err := stringList(ext)
	if err != nil {
		return nil, fmt.Errorf("%s:%d: %s: extends: %v", d.files[name], ext.Line, name, err)
	}
	merged := &yaml.Node{Kind: yaml.MappingNode, Line: n.Line}
	for _, b := range bases {
		bn, err := d.extended(b, append(seen, name))
		if err != nil {
			return nil, err
		}
		merged = deepMerge(merged, bn)
	}
	own := &yaml.Node{Kind: yaml.MappingNode, Line: n.Line}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != "extends" {
			own.Content = append(own.Content, n.Content[i], n.Content[i+1])
		}
	}
	out := deepMerge(merged, own)
	out.Line = n.Line
	return out, nil
}

// parseJob reads one job; parallel makes it several.
func parseJob(file, name string, n *yaml.Node, defaults map[string]*yaml.Node, globals []Var, ctx *Context) ([]*CIJob, error) {
	j := &CIJob{Name: name, Stage: "test", When: "on_success", line: n.Line, file: file}
	bad := func(at *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: job %s: %s", file, at.Line, name, fmt.Sprintf(format, args...))
	}
	inheritDefault, inheritVars := true, true
	var inheritDefaultKeys, inheritVarNames []string
	keys := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		supported, known := jobKeys[k.Value]
		if !known || !supported {
			return nil, bad(k, "berth exec does not support the keyword %q: run this job on GitLab, or remove it to try the job locally", k.Value)
		}
		keys[k.Value] = v
		if k.Value == "inherit" {
			for x := 0; x+1 < len(v.Content); x += 2 {
				ik, iv := v.Content[x].Value, v.Content[x+1]
				all, list, err := boolOrList(iv)
				if err != nil {
					return nil, bad(iv, "inherit: %s: %v", ik, err)
				}
				switch ik {
				case "default":
					inheritDefault, inheritDefaultKeys = all, list
				case "variables":
					inheritVars, inheritVarNames = all, list
				default:
					return nil, bad(iv, "inherit: berth exec does not know %q", ik)
				}
			}
		}
	}
	for _, k := range defaultKeys {
		if _, own := keys[k]; own {
			continue
		}
		if dv, ok := defaults[k]; ok && (inheritDefault || contains(inheritDefaultKeys, k)) {
			keys[k] = dv
		}
	}
	for _, g := range globals {
		if inheritVars || contains(inheritVarNames, g.Key) {
			j.Variables = append(j.Variables, g)
		}
	}
	var parallel *yaml.Node
	for _, k := range sortedKeys(keys) {
		v := keys[k]
		var err error
		switch k {
		case "stage":
			j.Stage = v.Value
		case "image":
			j.Image, j.Entrypoint, err = imageName(v)
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
			j.When, err = whenValue(v.Value)
		case "allow_failure":
			j.AllowFailure, err = parseAllowFailure(v)
			j.allowFailureGiven = true
		case "needs":
			j.Needs, err = parseNeeds(v)
			if j.Needs == nil && err == nil {
				j.Needs = []Need{}
			}
		case "dependencies":
			j.HasDeps = true
			j.Dependencies, err = stringList(v)
		case "artifacts":
			j.Artifacts, err = parseArtifacts(v)
		case "cache":
			j.Cache, err = parseCaches(v)
		case "parallel":
			parallel = v
		case "timeout":
			j.Timeout, err = parseTimeout(v.Value)
		case "retry":
			j.Retry, err = parseRetry(v)
		case "environment":
			if v.Kind == yaml.ScalarNode {
				j.Environment = v.Value
			} else if en, ok := lookup(v, "name"); ok {
				j.Environment = en.Value
			}
		case "trigger":
			j.Trigger = true
			j.Notes = append(j.Notes, "trigger: GitLab starts another pipeline; skipped here")
		case "release":
			j.Notes = append(j.Notes, "release: makes a GitLab release, which berth exec does not")
		case "secrets":
			j.Notes = append(j.Notes, "secrets: come from a secrets manager through GitLab, which berth exec cannot reach; the job runs without them")
		case "id_tokens":
			j.Notes = append(j.Notes, "id_tokens: GitLab's OIDC tokens are not made here; the job runs without them")
		case "hooks":
			j.Notes = append(j.Notes, "hooks: pre_get_sources_script is not run here")
		case "start_in":
			j.Notes = append(j.Notes, "start_in: a delayed job starts at once here")
		}
		if err != nil {
			return nil, bad(v, "%s: %v", k, err)
		}
	}
	if j.When == "delayed" {
		j.When = "on_success"
	}
	if len(j.Script) == 0 && !j.Trigger {
		return nil, bad(n, "script is missing (every job needs one)")
	}
	if j.rules != nil && (j.only != nil || j.except != nil) {
		return nil, bad(n, "rules cannot be used with only or except")
	}
	if parallel == nil {
		return []*CIJob{j}, nil
	}
	jobs, err := expandParallel(j, parallel)
	if err != nil {
		return nil, bad(parallel, "parallel: %v", err)
	}
	return jobs, nil
}

func sortedKeys(m map[string]*yaml.Node) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// boolOrList reads true/false or a list of names.
func boolOrList(n *yaml.Node) (bool, []string, error) {
	if n.Kind == yaml.ScalarNode {
		b, err := strconv.ParseBool(n.Value)
		return b, nil, err
	}
	list, err := stringList(n)
	return false, list, err
}

// expandParallel makes parallel: N and parallel: matrix copies of j, named
// as GitLab names them ("test 1/3", "build: [amd64, alpine]").
func expandParallel(j *CIJob, n *yaml.Node) ([]*CIJob, error) {
	copyJob := func(name string, i, total int, vars []Var) *CIJob {
		c := *j
		c.Name = name
		c.Variables = append(append([]Var(nil), j.Variables...), vars...)
		c.Variables = append(c.Variables, Var{"CI_NODE_INDEX", strconv.Itoa(i)}, Var{"CI_NODE_TOTAL", strconv.Itoa(total)})
		c.Parallel = &ParallelIndex{Base: j.Name, Index: i, Total: total}
		return &c
	}
	if n.Kind == yaml.ScalarNode {
		total, err := strconv.Atoi(n.Value)
		if err != nil || total < 1 || total > 200 {
			return nil, fmt.Errorf("want a number from 1 to 200, or matrix")
		}
		var out []*CIJob
		for i := 1; i <= total; i++ {
			out = append(out, copyJob(fmt.Sprintf("%s %d/%d", j.Name, i, total), i, total, nil))
		}
		return out, nil
	}
	m, ok := lookup(n, "matrix")
	if !ok || m.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a number or matrix: a list of variables and their values")
	}
	var combos [][]Var
	for _, entry := range m.Content {
		if entry.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("matrix: want mappings of variables to a value or a list")
		}
		part := [][]Var{nil}
		for i := 0; i+1 < len(entry.Content); i += 2 {
			key := entry.Content[i].Value
			values, err := stringList(entry.Content[i+1])
			if err != nil {
				return nil, fmt.Errorf("matrix: %s: %v", key, err)
			}
			var next [][]Var
			for _, p := range part {
				for _, v := range values {
					next = append(next, append(append([]Var(nil), p...), Var{key, v}))
				}
			}
			part = next
		}
		combos = append(combos, part...)
	}
	if len(combos) > 200 {
		return nil, fmt.Errorf("matrix: %d jobs, GitLab allows 200", len(combos))
	}
	var out []*CIJob
	for i, vars := range combos {
		var vals []string
		for _, v := range vars {
			vals = append(vals, v.Value)
		}
		out = append(out, copyJob(fmt.Sprintf("%s: [%s]", j.Name, strings.Join(vals, ", ")), i+1, len(combos), vars))
	}
	return out, nil
}

func parseAllowFailure(n *yaml.Node) (allowFailure, error) {
	if n.Kind == yaml.ScalarNode {
		b, err := strconv.ParseBool(n.Value)
		return allowFailure{allowed: b}, err
	}
	ec, ok := lookup(n, "exit_codes")
	if !ok {
		return allowFailure{}, fmt.Errorf("want true, false or exit_codes")
	}
	codes, err := stringList(ec)
	if err != nil {
		return allowFailure{}, err
	}
	af := allowFailure{allowed: true}
	for _, c := range codes {
		v, err := strconv.Atoi(c)
		if err != nil {
			return allowFailure{}, fmt.Errorf("exit_codes: %q is not a number", c)
		}
		af.exitCodes = append(af.exitCodes, v)
	}
	return af, nil
}

func parseNeeds(n *yaml.Node) ([]Need, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return []Need{}, nil // needs: with nothing: none
	}
	if n.Kind == yaml.ScalarNode {
		n = &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{n}}
	}
	if n.Kind == yaml.MappingNode { // needs: {pipeline: ...} or a single need
		n = &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{n}}
	}
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a list of jobs")
	}
	out := []Need{}
	for _, c := range flatten(n.Content) {
		nd := Need{Artifacts: true}
		switch c.Kind {
		case yaml.ScalarNode:
			nd.Job = c.Value
		case yaml.MappingNode:
			for i := 0; i+1 < len(c.Content); i += 2 {
				k, v := c.Content[i].Value, c.Content[i+1]
				switch k {
				case "job":
					nd.Job = v.Value
				case "artifacts":
					nd.Artifacts = v.Value == "true"
				case "optional":
					nd.Optional = v.Value == "true"
				case "parallel":
					// needs: parallel: matrix names some copies; all of them here
				case "project", "pipeline", "ref":
					return nil, fmt.Errorf("%s: a job of another pipeline or project needs a GitLab: run this pipeline on GitLab", k)
				default:
					return nil, fmt.Errorf("berth exec does not know %q", k)
				}
			}
		default:
			return nil, fmt.Errorf("want job names or {job, artifacts, optional}")
		}
		if nd.Job == "" {
			return nil, fmt.Errorf("an entry names no job")
		}
		out = append(out, nd)
	}
	return out, nil
}

func parseArtifacts(n *yaml.Node) (*Artifacts, error) {
	a := &Artifacts{When: "on_success"}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("want a mapping")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i].Value, n.Content[i+1]
		var err error
		switch k {
		case "paths":
			a.Paths, err = stringList(v)
		case "exclude":
			a.Exclude, err = stringList(v)
		case "untracked":
			a.Untracked = v.Value == "true"
		case "when":
			a.When = v.Value
		case "reports":
			if dv, ok := lookup(v, "dotenv"); ok {
				a.Dotenv, err = stringList(dv)
			}
		case "name", "expire_in", "expose_as", "public", "access":
		default:
			err = fmt.Errorf("berth exec does not know %q", k)
		}
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

func parseCaches(n *yaml.Node) ([]Cache, error) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	var out []Cache
	for _, it := range items {
		c := Cache{Key: "default", Policy: "pull-push", When: "on_success"}
		if it.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("want a mapping (key, paths, ...)")
		}
		for i := 0; i+1 < len(it.Content); i += 2 {
			k, v := it.Content[i].Value, it.Content[i+1]
			var err error
			switch k {
			case "key":
				if v.Kind == yaml.MappingNode {
					if f, ok := lookup(v, "files"); ok {
						c.KeyFiles, err = stringList(f)
					}
					if p, ok := lookup(v, "prefix"); ok {
						c.KeyPrefix = p.Value
					}
				} else {
					c.Key = v.Value
				}
			case "paths":
				c.Paths, err = stringList(v)
			case "untracked":
				c.Untracked = v.Value == "true"
			case "policy":
				c.Policy = v.Value
			case "when":
				c.When = v.Value
			case "fallback_keys":
				c.FallbackKeys, err = stringList(v)
			case "unprotect":
			default:
				err = fmt.Errorf("berth exec does not know %q", k)
			}
			if err != nil {
				return nil, err
			}
		}
		out = append(out, c)
	}
	return out, nil
}

func parseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(strings.ReplaceAll(s, " ", "")); err == nil {
		return d, nil
	}
	var total time.Duration
	units := map[string]time.Duration{"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
		"m": time.Minute, "min": time.Minute, "mins": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hrs": time.Hour, "hour": time.Hour, "hours": time.Hour, "d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour}
	fields := strings.Fields(strings.ReplaceAll(s, " and ", " "))
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		num := strings.TrimRightFunc(f, func(r rune) bool { return r < '0' || r > '9' })
		unit := f[len(num):]
		if unit == "" && i+1 < len(fields) {
			i++
			unit = fields[i]
		}
		n, err := strconv.Atoi(num)
		u, ok := units[strings.TrimSuffix(unit, ",")]
		if err != nil || !ok {
			return 0, fmt.Errorf("%q is not a duration (1h 30m, 90 minutes)", s)
		}
		total += time.Duration(n) * u
	}
	return total, nil
}

func parseRetry(n *yaml.Node) (int, error) {
	if n.Kind == yaml.MappingNode {
		m, ok := lookup(n, "max")
		if !ok {
			return 0, nil
		}
		n = m
	}
	r, err := strconv.Atoi(n.Value)
	if err != nil || r < 0 || r > 2 {
		return 0, fmt.Errorf("want 0, 1 or 2")
	}
	return r, nil
}

// stringList reads a string or a list of strings (nested lists are
// flattened, as GitLab does for script and !reference).
func stringList(n *yaml.Node) ([]string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, nil
		}
		return []string{n.Value}, nil
	case yaml.SequenceNode:
		out := []string{}
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
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("want a mapping of names to values")
	}
	var out []Var
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i].Value, n.Content[i+1]
		switch v.Kind {
		case yaml.ScalarNode:
			out = append(out, Var{k, v.Value})
		case yaml.MappingNode:
			val, _ := lookup(v, "value")
			value := ""
			if val != nil {
				value = val.Value
			}
			if ex, ok := lookup(v, "expand"); ok && ex.Value == "false" {
				value = strings.ReplaceAll(value, "$", "$$")
			}
			out = append(out, Var{k, value})
		default:
			return nil, fmt.Errorf("variable %s: want a value or {value, description, options, expand}", k)
		}
	}
	return out, nil
}

func imageName(n *yaml.Node) (string, []string, error) {
	if n.Kind == yaml.ScalarNode {
		return n.Value, nil, nil
	}
	if n.Kind == yaml.MappingNode {
		var name string
		var entry []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]
			var err error
			switch k {
			case "name":
				name = v.Value
			case "entrypoint":
				entry, err = stringList(v)
			case "pull_policy", "docker", "kubernetes":
			default:
				err = fmt.Errorf("image: berth exec does not know %q", k)
			}
			if err != nil {
				return "", nil, err
			}
		}
		return name, entry, nil
	}
	return "", nil, fmt.Errorf("image: want a name")
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
				k, v := c.Content[i].Value, c.Content[i+1]
				var err error
				switch k {
				case "name":
					s.Image = v.Value
				case "alias":
					s.Alias = strings.Split(v.Value, ",")[0]
				case "entrypoint":
					s.Entrypoint, err = stringList(v)
				case "command":
					s.Command, err = stringList(v)
				case "variables":
					s.Variables, err = variables(v)
				case "pull_policy":
					s.PullPolicy, err = stringList(v)
				case "docker", "kubernetes":
				default:
					err = fmt.Errorf("berth exec does not know %q", k)
				}
				if err != nil {
					return nil, fmt.Errorf("services: %s: %v", k, err)
				}
			}
			out = append(out, s)
		default:
			return nil, fmt.Errorf("services: want names or {name, alias, ...}")
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
