package local

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// GitLab's CI/CD expressions, as `rules: if`, `only/except: variables` and
// `workflow: rules` write them: $VAR or ${VAR} (true when set and not
// empty), "string" or 'string', /regex/ with an optional i flag, null;
// compared with ==, !=, =~, !~; joined with && (binding tighter) and ||;
// grouped with parentheses.

// Expr is a parsed expression.
type Expr interface {
	Eval(vars map[string]string) bool
}

type exprOr []Expr
type exprAnd []Expr

func (o exprOr) Eval(v map[string]string) bool {
	for _, e := range o {
		if e.Eval(v) {
			return true
		}
	}
	return false
}

func (a exprAnd) Eval(v map[string]string) bool {
	for _, e := range a {
		if !e.Eval(v) {
			return false
		}
	}
	return true
}

// operand is one side of a comparison.
type operand struct {
	kind  byte // 'v' variable, 's' string, 'r' regex, 'n' null
	text  string
	flags string
}

// value is the operand's value; ok is false for null and unset
// variables.
func (o operand) value(vars map[string]string) (string, bool) {
	switch o.kind {
	case 'v':
		v, ok := vars[o.text]
		return v, ok
	case 'n':
		return "", false
	}
	return o.text, true
}

// regexp is the operand as a pattern: a regex literal, or a variable
// holding "/re/flags".
func (o operand) regexp(vars map[string]string) (*regexp.Regexp, error) {
	pat, flags := o.text, o.flags
	if o.kind == 'v' || o.kind == 's' {
		s, _ := o.value(vars)
		m := regexLiteral.FindStringSubmatch(s)
		if m == nil {
			return nil, fmt.Errorf("%q is not a /regex/", s)
		}
		pat, flags = m[1], m[2]
	}
	if strings.Contains(flags, "i") {
		pat = "(?i)" + pat
	}
	return regexp.Compile(pat)
}

var regexLiteral = regexp.MustCompile(`^/(.*)/([a-z]*)$`)

type comparison struct {
	left  operand
	op    string // "" for a bare operand
	right operand
}

func (c comparison) Eval(vars map[string]string) bool {
	l, lok := c.left.value(vars)
	switch c.op {
	case "":
		return lok && l != ""
	case "==", "!=":
		r, rok := c.right.value(vars)
		eq := lok == rok && l == r
		if c.op == "==" {
			return eq
		}
		return !eq
	default: // =~, !~
		re, err := c.right.regexp(vars)
		match := err == nil && lok && re.MatchString(l)
		if c.op == "=~" {
			return match
		}
		return !match
	}
}

// ParseExpr parses an expression.
func ParseExpr(s string) (Expr, error) {
	p := &exprParser{src: s}
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos < len(p.src) {
		return nil, fmt.Errorf("unexpected %q at %d in %q", p.src[p.pos:], p.pos, s)
	}
	return e, nil
}

type exprParser struct {
	src string
	pos int
}

func (p *exprParser) space() {
	for p.pos < len(p.src) && unicode.IsSpace(rune(p.src[p.pos])) {
		p.pos++
	}
}

func (p *exprParser) take(tok string) bool {
	p.space()
	if strings.HasPrefix(p.src[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *exprParser) or() (Expr, error) {
	var o exprOr
	for {
		a, err := p.and()
		if err != nil {
			return nil, err
		}
		o = append(o, a)
		if !p.take("||") {
			break
		}
	}
	if len(o) == 1 {
		return o[0], nil
	}
	return o, nil
}

func (p *exprParser) and() (Expr, error) {
	var a exprAnd
	for {
		u, err := p.unary()
		if err != nil {
			return nil, err
		}
		a = append(a, u)
		if !p.take("&&") {
			break
		}
	}
	if len(a) == 1 {
		return a[0], nil
	}
	return a, nil
}

func (p *exprParser) unary() (Expr, error) {
	if p.take("(") {
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		if !p.take(")") {
			return nil, fmt.Errorf("a ( is not closed in %q", p.src)
		}
		return e, nil
	}
	left, err := p.operand()
	if err != nil {
		return nil, err
	}
	c := comparison{left: left}
	for _, op := range []string{"==", "!=", "=~", "!~"} {
		if p.take(op) {
			c.op = op
			if c.right, err = p.operand(); err != nil {
				return nil, err
			}
			if (op == "=~" || op == "!~") && c.right.kind == 'r' {
				if _, err := c.right.regexp(nil); err != nil {
					return nil, fmt.Errorf("bad regex /%s/: %v", c.right.text, err)
				}
			}
			break
		}
	}
	return c, nil
}

var (
	varRe   = regexp.MustCompile(`^\$(\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))`)
	strRe   = regexp.MustCompile(`^("((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')`)
	regexRe = regexp.MustCompile(`^/((?:[^/\\]|\\.)*)/([a-z]*)`)
)

func (p *exprParser) operand() (operand, error) {
	p.space()
	rest := p.src[p.pos:]
	switch {
	case varRe.MatchString(rest):
		m := varRe.FindStringSubmatch(rest)
		p.pos += len(m[0])
		return operand{kind: 'v', text: m[2] + m[3]}, nil
	case strRe.MatchString(rest):
		m := strRe.FindStringSubmatch(rest)
		p.pos += len(m[0])
		return operand{kind: 's', text: unescape(m[2] + m[3])}, nil
	case regexRe.MatchString(rest):
		m := regexRe.FindStringSubmatch(rest)
		p.pos += len(m[0])
		return operand{kind: 'r', text: strings.ReplaceAll(m[1], `\/`, "/"), flags: m[2]}, nil
	case strings.HasPrefix(rest, "null"):
		p.pos += 4
		return operand{kind: 'n'}, nil
	}
	if rest == "" {
		return operand{}, fmt.Errorf("%q ends where a value should come", p.src)
	}
	return operand{}, fmt.Errorf("%q: expected $VARIABLE, \"string\", /regex/ or null at %q", p.src, rest)
}

func unescape(s string) string {
	return strings.NewReplacer(`\"`, `"`, `\'`, `'`, `\\`, `\`).Replace(s)
}
