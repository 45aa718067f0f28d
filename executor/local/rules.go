package local

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Ref is what a pipeline runs for: a branch or a tag.
type Ref struct {
	Name  string
	IsTag bool
}

// Context is what decides which jobs a pipeline has: the ref, the
// variables (predefined, the file's, --var), the files the commit changed
// and the repository's files.
type Context struct {
	Ref  Ref
	Repo string
	// Vars are the predefined variables and the command line's --var,
	// which win over the file's.
	Vars map[string]string
	// Changed are the files the commit changed (against its parent), for
	// rules: changes; nil: every file counts as changed, as GitLab does
	// for a new branch.
	Changed []string
}

// vars are the variables an expression sees: c.Vars over file over
// job, each value expanded once.
func (c *Context) vars(layers ...[]Var) map[string]string {
	out := map[string]string{}
	for _, l := range layers {
		for _, v := range l {
			out[v.Key] = v.Value
		}
	}
	for k, v := range c.Vars {
		out[k] = v
	}
	for k, v := range out {
		out[k] = expandWith(v, out)
	}
	return out
}

var varRefRe = regexp.MustCompile(`\$(\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))`)

// expandWith replaces $VAR and ${VAR} in s, as GitLab expands variables
// in keyword values; an unknown variable is empty.
func expandWith(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	s = strings.ReplaceAll(s, "$$", "\x00")
	s = varRefRe.ReplaceAllStringFunc(s, func(m string) string {
		sm := varRefRe.FindStringSubmatch(m)
		return vars[sm[2]+sm[3]]
	})
	return strings.ReplaceAll(s, "\x00", "$")
}

func (c *Context) expand(s string, layers ...[]Var) string { return expandWith(s, c.vars(layers...)) }

// rule is one entry of rules: its conditions and what it sets.
type rule struct {
	cond         Expr // nil: no if
	changes      []string
	exists       []string
	when         string
	allowFailure *bool
	exitCodes    []int
	variables    []Var
	line         int
}

func parseRules(n *yaml.Node) ([]rule, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("rules: want a list")
	}
	var out []rule
	for _, c := range flatten(n.Content) {
		if c.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("rules: want a list of mappings (if, changes, exists, when, ...)")
		}
		r := rule{line: c.Line}
		for i := 0; i+1 < len(c.Content); i += 2 {
			k, v := c.Content[i].Value, c.Content[i+1]
			var err error
			switch k {
			case "if":
				if r.cond, err = ParseExpr(v.Value); err != nil {
					err = fmt.Errorf("if %q: %v", v.Value, err)
				}
			case "changes":
				if v.Kind == yaml.MappingNode {
					p, ok := lookup(v, "paths")
					if !ok {
						return nil, fmt.Errorf("rules: changes: want paths")
					}
					v = p
				}
				r.changes, err = stringList(v)
			case "exists":
				if v.Kind == yaml.MappingNode {
					if _, ok := lookup(v, "project"); ok {
						return nil, fmt.Errorf("rules: exists: project needs another GitLab project: berth exec checks this repository only")
					}
					p, _ := lookup(v, "paths")
					v = p
				}
				if v == nil {
					return nil, fmt.Errorf("rules: exists: want paths")
				}
				r.exists, err = stringList(v)
			case "when":
				r.when, err = whenValue(v.Value)
			case "allow_failure":
				var af allowFailure
				if af, err = parseAllowFailure(v); err == nil {
					r.allowFailure, r.exitCodes = &af.allowed, af.exitCodes
				}
			case "variables":
				r.variables, err = variables(v)
			case "start_in", "needs", "interruptible", "auto_cancel":
			default:
				err = fmt.Errorf("berth exec does not know the rules key %q", k)
			}
			if err != nil {
				return nil, fmt.Errorf("rules: %v", err)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// flatten lifts the items of nested lists, as GitLab does for the lists
// a !reference brings in.
func flatten(items []*yaml.Node) []*yaml.Node {
	var out []*yaml.Node
	for _, c := range items {
		if c.Kind == yaml.SequenceNode {
			out = append(out, flatten(c.Content)...)
			continue
		}
		out = append(out, c)
	}
	return out
}

func whenValue(s string) (string, error) {
	switch s {
	case "on_success", "manual", "always", "never", "on_failure", "delayed":
		return s, nil
	}
	return "", fmt.Errorf("when %q is not on_success, manual, always, on_failure, delayed or never", s)
}

// firstRule is the first rule whose conditions hold, or nil.
func (c *Context) firstRule(rs []rule, layers ...[]Var) *rule {
	vars := c.vars(layers...)
	for i := range rs {
		r := &rs[i]
		if r.cond != nil && !r.cond.Eval(vars) {
			continue
		}
		if r.changes != nil && !c.anyChanged(r.changes, vars) {
			continue
		}
		if r.exists != nil && !c.anyExists(r.exists, vars) {
			continue
		}
		return r
	}
	return nil
}

// anyChanged says whether the commit changed a file one of the patterns
// names.
func (c *Context) anyChanged(patterns []string, vars map[string]string) bool {
	if c.Changed == nil {
		return true
	}
	for _, p := range patterns {
		re, err := globRegexp(strings.TrimPrefix(expandWith(p, vars), "/"))
		if err != nil {
			continue
		}
		for _, f := range c.Changed {
			if re.MatchString(f) {
				return true
			}
		}
	}
	return false
}

// anyExists says whether the repository has a file one of the patterns
// names.
func (c *Context) anyExists(patterns []string, vars map[string]string) bool {
	l := &loader{repo: c.Repo}
	for _, p := range patterns {
		p = strings.TrimPrefix(expandWith(p, vars), "/")
		if !strings.ContainsAny(p, "*?[{") {
			if _, err := os.Stat(filepath.Join(c.Repo, p)); err == nil {
				return true
			}
			continue
		}
		if m, err := l.glob(p); err == nil && len(m) > 0 {
			return true
		}
	}
	return false
}

// refFilter is only or except: refs, variables, changes (and
// kubernetes: active, never true here).
type refFilter struct {
	refs       []string
	exprs      []Expr
	changes    []string
	kubernetes bool
}

// Pipeline sources a ref keyword of only/except names: a local run is a
// push.
var refKeywords = map[string]bool{"api": false, "branches": true, "chat": false, "external_pull_requests": false,
	"merge_requests": false, "pipelines": false, "pushes": true, "schedules": false, "tags": true, "triggers": false, "web": false}

func parseRefFilter(n *yaml.Node) (*refFilter, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil // only: or except: with nothing: no filter
	}
	f := &refFilter{}
	if n.Kind != yaml.MappingNode {
		refs, err := stringList(n)
		f.refs = refs
		return f, err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i].Value, n.Content[i+1]
		var err error
		switch k {
		case "refs":
			f.refs, err = stringList(v)
		case "variables":
			var list []string
			if list, err = stringList(v); err == nil {
				for _, s := range list {
					e, perr := ParseExpr(s)
					if perr != nil {
						return nil, fmt.Errorf("only/except: variables %q: %v", s, perr)
					}
					f.exprs = append(f.exprs, e)
				}
			}
		case "changes":
			f.changes, err = stringList(v)
		case "kubernetes":
			f.kubernetes = true
		default:
			err = fmt.Errorf("only/except: berth exec does not know %q", k)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, r := range f.refs {
		if isRegex(r) {
			if _, err := regexp.Compile(r[1 : len(r)-1]); err != nil {
				return nil, fmt.Errorf("only/except: %s: %v", r, err)
			}
		}
	}
	return f, nil
}

func isRegex(s string) bool {
	return len(s) >= 2 && strings.HasPrefix(s, "/") && (strings.HasSuffix(s, "/") || regexLiteral.MatchString(s))
}

// empty is a filter that says nothing (except: []).
func (f *refFilter) empty() bool {
	return f == nil || len(f.refs) == 0 && len(f.exprs) == 0 && f.changes == nil && !f.kubernetes
}

// match says whether every part of the filter holds (only), as GitLab
// reads only; except reads it the same way and inverts.
func (f *refFilter) match(c *Context, vars map[string]string) bool {
	if len(f.refs) > 0 && !f.matchRef(c.Ref) {
		return false
	}
	if len(f.exprs) > 0 {
		any := false
		for _, e := range f.exprs {
			any = any || e.Eval(vars)
		}
		if !any {
			return false
		}
	}
	if f.changes != nil && !c.anyChanged(f.changes, vars) {
		return false
	}
	return !f.kubernetes
}

func (f *refFilter) matchRef(ref Ref) bool {
	for _, r := range f.refs {
		if pushes, known := refKeywords[r]; known {
			switch r {
			case "branches":
				if !ref.IsTag {
					return true
				}
			case "tags":
				if ref.IsTag {
					return true
				}
			default:
				if pushes {
					return true
				}
			}
			continue
		}
		name := r
		if i := strings.Index(r, "@"); i > 0 && !isRegex(r) { // ref@project: the project is this one
			name = r[:i]
		}
		switch {
		case name == ref.Name:
			return true
		case isRegex(name):
			m := regexLiteral.FindStringSubmatch(name)
			pat := m[1]
			if strings.Contains(m[2], "i") {
				pat = "(?i)" + pat
			}
			if re, err := regexp.Compile(pat); err == nil && re.MatchString(ref.Name) {
				return true
			}
		}
	}
	return false
}
