package local

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Assembling the configuration as GitLab does before it reads a job: the
// file and what it includes (include: local, nested, with globs, under
// their rules and with their inputs), deep-merged with the including file
// winning; YAML anchors and merge keys; !reference tags.

// doc is a configuration being assembled: its top-level keys in order.
type doc struct {
	keys  []string
	nodes map[string]*yaml.Node
	files map[string]string // key → the file that defined it, for messages
}

func newDoc() *doc { return &doc{nodes: map[string]*yaml.Node{}, files: map[string]string{}} }

// set puts key, deep-merging a mapping into the one there.
func (d *doc) set(key string, v *yaml.Node, file string) {
	if old, ok := d.nodes[key]; ok {
		d.nodes[key] = deepMerge(old, v)
	} else {
		d.keys = append(d.keys, key)
		d.nodes[key] = v
	}
	d.files[key] = file
}

// deepMerge is over laid on base: mappings merge key by key, anything
// else is replaced.
func deepMerge(base, over *yaml.Node) *yaml.Node {
	if base.Kind != yaml.MappingNode || over.Kind != yaml.MappingNode {
		return over
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: base.Tag, Line: over.Line, Column: over.Column}
	idx := map[string]int{}
	for i := 0; i+1 < len(base.Content); i += 2 {
		idx[base.Content[i].Value] = len(out.Content)
		out.Content = append(out.Content, base.Content[i], base.Content[i+1])
	}
	for i := 0; i+1 < len(over.Content); i += 2 {
		k := over.Content[i].Value
		if at, ok := idx[k]; ok {
			out.Content[at+1] = deepMerge(out.Content[at+1], over.Content[i+1])
			continue
		}
		idx[k] = len(out.Content)
		out.Content = append(out.Content, over.Content[i], over.Content[i+1])
	}
	return out
}

// loader reads a repository's configuration.
type loader struct {
	repo  string
	ctx   *Context // for include: rules and $VARIABLES in include paths
	files int
}

// maxIncludes bounds a configuration, as GitLab bounds it (150 files).
const maxIncludes = 150

// load reads file (relative to the repository) into d; its own keys win
// over what it includes. inputs are the values its includer gave.
func (l *loader) load(d *doc, file string, inputs map[string]any, depth int) error {
	l.files++
	if l.files > maxIncludes || depth > 100 {
		return fmt.Errorf("%s: more than %d files are included (or they include each other)", file, maxIncludes)
	}
	data, err := os.ReadFile(filepath.Join(l.repo, file))
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	root, err := parseDocument(file, data, inputs)
	if err != nil {
		return err
	}
	if root == nil {
		return nil
	}
	own := newDoc()
	var includes *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value == "include" {
			includes = v
			continue
		}
		own.set(k.Value, v, file)
	}
	if includes != nil {
		if err := l.includes(d, file, includes, depth); err != nil {
			return err
		}
	}
	for _, k := range own.keys {
		d.set(k, own.nodes[k], file)
	}
	return nil
}

// includes loads what n includes, in order.
func (l *loader) includes(d *doc, from string, n *yaml.Node, depth int) error {
	var items []*yaml.Node
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	} else {
		items = []*yaml.Node{n}
	}
	bad := func(at *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: include: %s", from, at.Line, fmt.Sprintf(format, args...))
	}
	for _, it := range items {
		var path string
		var inputs map[string]any
		switch it.Kind {
		case yaml.ScalarNode:
			path = it.Value
			if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
				return bad(it, "remote %s needs the network: berth exec reads local files only; copy it into the repository and include it with local", path)
			}
		case yaml.MappingNode:
			var rules *yaml.Node
			for i := 0; i+1 < len(it.Content); i += 2 {
				k, v := it.Content[i].Value, it.Content[i+1]
				switch k {
				case "local":
					path = v.Value
				case "rules":
					rules = v
				case "inputs":
					if err := v.Decode(&inputs); err != nil {
						return bad(v, "inputs: %v", err)
					}
				case "remote", "template", "project", "component", "file", "ref":
					if k == "file" || k == "ref" {
						continue // with project
					}
					return bad(it, "%s %s needs %s: berth exec reads local files only; copy it into the repository and include it with local, or run this pipeline on GitLab",
						k, v.Value, map[string]string{"remote": "the network", "template": "GitLab's templates", "project": "another GitLab project", "component": "the CI/CD catalog"}[k])
				case "cache", "integrity":
				default:
					return bad(it, "berth exec does not know %q", k)
				}
			}
			if rules != nil {
				rs, err := parseRules(rules)
				if err != nil {
					return bad(rules, "%v", err)
				}
				if r := l.ctx.firstRule(rs, nil); r == nil || r.when == "never" {
					continue
				}
			}
			if path == "" {
				return bad(it, "an include needs local (or names what needs a GitLab)")
			}
		default:
			return bad(it, "want a path or a mapping")
		}
		path = l.ctx.expand(path, nil)
		matches, err := l.glob(path)
		if err != nil {
			return bad(it, "%v", err)
		}
		if len(matches) == 0 {
			return bad(it, "local %s: no such file in the repository", path)
		}
		for _, m := range matches {
			if err := l.load(d, m, inputs, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// glob is the repository's files that path names: from the root, with *
// and ** (one or more directories).
func (l *loader) glob(path string) ([]string, error) {
	p := strings.TrimPrefix(path, "/")
	if strings.Contains(p, "..") {
		return nil, fmt.Errorf("local %s: stays inside the repository", path)
	}
	if !strings.ContainsAny(p, "*?[") {
		if _, err := os.Stat(filepath.Join(l.repo, p)); err != nil {
			return nil, nil
		}
		return []string{p}, nil
	}
	re, err := globRegexp(p)
	if err != nil {
		return nil, err
	}
	var out []string
	err = filepath.WalkDir(l.repo, func(f string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(l.repo, f)
		if e.IsDir() && rel == ".git" {
			return filepath.SkipDir
		}
		if !e.IsDir() && re.MatchString(filepath.ToSlash(rel)) {
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

// globRegexp turns a GitLab glob (*, **, ?, {a,b}) into a regexp.
func globRegexp(g string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(g); i++ {
		switch c := g[i]; {
		case strings.HasPrefix(g[i:], "**/"):
			b.WriteString("(?:.*/)?")
			i += 2
		case strings.HasPrefix(g[i:], "**"):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		case c == '{':
			end := strings.IndexByte(g[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("glob %s: { is not closed", g)
			}
			alts := strings.Split(g[i+1:i+end], ",")
			for k := range alts {
				alts[k] = regexp.QuoteMeta(alts[k])
			}
			b.WriteString("(?:" + strings.Join(alts, "|") + ")")
			i += end
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// parseDocument reads one file: a configuration, or a spec: header
// document (with inputs) and the configuration, its $[[ inputs.NAME ]]
// filled in.
func parseDocument(file string, data []byte, inputs map[string]any) (*yaml.Node, error) {
	// a spec: header is its own document, before the configuration's
	text := string(data)
	if loc := docSeparator.FindStringIndex(text); loc != nil && strings.TrimSpace(stripComments(text[:loc[0]])) == "" {
		text = text[loc[1]:] // a --- before the first document
	}
	if parts := docSeparator.Split(text, 2); len(parts) == 2 && strings.HasPrefix(strings.TrimSpace(stripComments(parts[0])), "spec:") {
		var header yaml.Node
		if err := yaml.Unmarshal([]byte(parts[0]), &header); err != nil {
			return nil, fmt.Errorf("%s: spec: %w", file, err)
		}
		spec, _ := lookup(header.Content[0], "spec")
		values, err := specInputs(file, spec, inputs)
		if err != nil {
			return nil, err
		}
		body := inputRe.ReplaceAllStringFunc(parts[1], func(m string) string {
			return fmt.Sprint(values[inputRe.FindStringSubmatch(m)[1]])
		})
		return parseConfig(file, []byte(body))
	}
	return parseConfig(file, []byte(text))
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// stripComments drops the comment lines of a YAML text.
func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// parseConfig reads one configuration document.
func parseConfig(file string, data []byte) (*yaml.Node, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(n.Content) == 0 {
		return nil, nil
	}
	return checkRoot(file, n.Content[0])
}

var inputRe = regexp.MustCompile(`\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*(?:\|[^\]]*)?\]\]`)

func checkRoot(file string, n *yaml.Node) (*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: not a mapping of keywords and jobs", file)
	}
	return resolve(n), nil
}

// specInputs are the inputs a file declares, with the includer's values
// over their defaults.
func specInputs(file string, spec *yaml.Node, given map[string]any) (map[string]any, error) {
	out := map[string]any{}
	var s struct {
		Inputs map[string]struct {
			Default any `yaml:"default"`
		} `yaml:"inputs"`
	}
	if err := spec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: spec: %w", file, err)
	}
	for name, in := range s.Inputs {
		if v, ok := given[name]; ok {
			out[name] = v
		} else if in.Default != nil {
			out[name] = in.Default
		} else {
			return nil, fmt.Errorf("%s: spec: input %s has no default and the include gives none", file, name)
		}
	}
	for name := range given {
		if _, ok := s.Inputs[name]; !ok {
			return nil, fmt.Errorf("%s: spec: the include gives input %s, which the file does not declare", file, name)
		}
	}
	return out, nil
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

// references replaces every !reference [key, ...] in n by what it names
// in d; depth bounds references to references.
func (d *doc) references(n *yaml.Node, depth int) (*yaml.Node, error) {
	if depth > 10 {
		return nil, fmt.Errorf("line %d: !reference nests more than 10 deep (or refers to itself)", n.Line)
	}
	if n.Tag == "!reference" {
		if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
			return nil, fmt.Errorf("line %d: !reference wants a list of keys", n.Line)
		}
		cur, ok := d.nodes[n.Content[0].Value]
		if ext, err := d.extended(n.Content[0].Value, nil); ok && err == nil {
			cur = ext // what it names after extends, as GitLab reads it
		}
		for _, k := range n.Content[1:] {
			if !ok || cur.Kind != yaml.MappingNode {
				break
			}
			cur, ok = lookup(cur, k.Value)
		}
		if !ok {
			var path []string
			for _, k := range n.Content {
				path = append(path, k.Value)
			}
			return nil, fmt.Errorf("line %d: !reference [%s] names nothing", n.Line, strings.Join(path, ", "))
		}
		return d.references(cur, depth+1)
	}
	if n.Kind != yaml.SequenceNode && n.Kind != yaml.MappingNode {
		return n, nil
	}
	c := *n
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, e := range n.Content {
		r, err := d.references(e, depth)
		if err != nil {
			return nil, err
		}
		c.Content[i] = r
	}
	return &c, nil
}

// lookup is m[key] of a mapping node.
func lookup(m *yaml.Node, key string) (*yaml.Node, bool) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1], true
		}
	}
	return nil, false
}
