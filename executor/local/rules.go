package local

import (
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Ref is what a pipeline runs for: a branch or a tag.
type Ref struct {
	Name  string
	IsTag bool
}

// refFilter is only/except with refs: branch and tag names, /regex/,
// "branches" and "tags".
type refFilter struct{ refs []string }

func parseRefFilter(n *yaml.Node) (*refFilter, error) {
	if n.Kind == yaml.MappingNode {
		var f *refFilter
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != "refs" {
				return nil, fmt.Errorf("only/except: berth exec supports refs only, not %q", n.Content[i].Value)
			}
			refs, err := stringList(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			f = &refFilter{refs}
		}
		return f, nil
	}
	refs, err := stringList(n)
	if err != nil {
		return nil, err
	}
	for _, r := range refs {
		if isRegex(r) {
			if _, err := regexp.Compile(r[1 : len(r)-1]); err != nil {
				return nil, fmt.Errorf("only/except: %s: %v", r, err)
			}
		} else if r == "merge_requests" || r == "schedules" || r == "web" || r == "api" || r == "triggers" || r == "pushes" {
			return nil, fmt.Errorf("only/except: berth exec supports refs, branches and tags, not %q", r)
		}
	}
	return &refFilter{refs}, nil
}

func isRegex(s string) bool {
	return len(s) >= 2 && strings.HasPrefix(s, "/") && strings.HasSuffix(s, "/")
}

func (f *refFilter) match(ref Ref) bool {
	for _, r := range f.refs {
		switch {
		case r == "branches" && !ref.IsTag, r == "tags" && ref.IsTag, r == ref.Name:
			return true
		case isRegex(r) && regexp.MustCompile(r[1:len(r)-1]).MatchString(ref.Name):
			return true
		}
	}
	return false
}

// rule is one `- if: EXPR` with an optional when.
type rule struct {
	cond expr
	when string
}

func parseRules(n *yaml.Node) ([]rule, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("rules: want a list")
	}
	var out []rule
	for _, c := range n.Content {
		if c.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("rules: want a list of {if, when}")
		}
		r := rule{cond: always{}} // no when: the job's
		for i := 0; i+1 < len(c.Content); i += 2 {
			k, v := c.Content[i].Value, c.Content[i+1].Value
			switch k {
			case "if":
				e, err := parseExpr(v)
				if err != nil {
					return nil, fmt.Errorf("rules: if %q: %v", v, err)
				}
				r.cond = e
			case "when":
				if !contains([]string{"on_success", "manual", "always", "never"}, v) {
					return nil, fmt.Errorf("rules: when %q is not on_success, manual, always or never", v)
				}
				r.when = v
			default:
				return nil, fmt.Errorf("rules: berth exec supports if and when, not %q", k)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// Applies says whether the job runs for ref, and how: on_success, manual
// or always; "" when it does not.
func (j *CIJob) Applies(ref Ref) string {
	if j.rules != nil {
		vars := map[string]string{"CI_COMMIT_REF_NAME": ref.Name}
		if ref.IsTag {
			vars["CI_COMMIT_TAG"] = ref.Name
		} else {
			vars["CI_COMMIT_BRANCH"] = ref.Name
		}
		for _, r := range j.rules {
			if r.cond.eval(vars) {
				switch r.when {
				case "never":
					return ""
				case "":
					return j.When
				}
				return r.when
			}
		}
		return ""
	}
	if j.only != nil && !j.only.match(ref) {
		return ""
	}
	if j.except != nil && j.except.match(ref) {
		return ""
	}
	if j.When == "never" {
		return ""
	}
	return j.When
}

// The `if:` expressions berth exec understands: $VAR, $VAR == "x",
// $VAR != "x", $VAR =~ /re/, $VAR !~ /re/, joined with && and ||, on
// CI_COMMIT_BRANCH, CI_COMMIT_TAG and CI_COMMIT_REF_NAME.
type expr interface {
	eval(vars map[string]string) bool
}

type always struct{}

func (always) eval(map[string]string) bool { return true }

type or []expr
type and []expr

func (o or) eval(v map[string]string) bool {
	for _, e := range o {
		if e.eval(v) {
			return true
		}
	}
	return false
}

func (a and) eval(v map[string]string) bool {
	for _, e := range a {
		if !e.eval(v) {
			return false
		}
	}
	return true
}

type compare struct {
	name, op, value string
	re              *regexp.Regexp
}

func (c compare) eval(v map[string]string) bool {
	val, set := v[c.name]
	switch c.op {
	case "":
		return set && val != ""
	case "==":
		return set && val == c.value
	case "!=":
		return !set || val != c.value
	case "=~":
		return set && c.re.MatchString(val)
	default: // !~
		return !set || !c.re.MatchString(val)
	}
}

var (
	compareRe = regexp.MustCompile(`^\$(\w+)\s*(?:(==|!=)\s*(?:"([^"]*)"|'([^']*)')|(=~|!~)\s*/(.*)/)?$`)
	execVars  = map[string]bool{"CI_COMMIT_BRANCH": true, "CI_COMMIT_TAG": true, "CI_COMMIT_REF_NAME": true}
)

func parseExpr(s string) (expr, error) {
	var o or
	for _, part := range strings.Split(s, "||") {
		var a and
		for _, term := range strings.Split(part, "&&") {
			term = strings.TrimSpace(term)
			m := compareRe.FindStringSubmatch(term)
			if m == nil {
				return nil, fmt.Errorf("berth exec understands $VAR, $VAR == \"x\", $VAR != \"x\", $VAR =~ /re/ joined by && and ||, not %q", term)
			}
			if !execVars[m[1]] {
				return nil, fmt.Errorf("berth exec knows only $CI_COMMIT_BRANCH, $CI_COMMIT_TAG and $CI_COMMIT_REF_NAME, not $%s", m[1])
			}
			c := compare{name: m[1], op: m[2], value: m[3] + m[4]}
			if m[5] != "" {
				re, err := regexp.Compile(m[6])
				if err != nil {
					return nil, err
				}
				c.op, c.re = m[5], re
			}
			a = append(a, c)
		}
		o = append(o, a)
	}
	return o, nil
}
