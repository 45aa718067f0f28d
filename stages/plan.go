// Package stages decides and performs what a job's pipeline stage does:
// run the job's script, or natively build, push, promote and deploy.
// Deciding is pure (Plan); performing talks to the engine and registry.
package stages

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// Plan is what one job does, from its stage, its ref and the TOML.
type Plan struct {
	Action   string         // settings.ActionScript, ActionDeploy or ActionRelease
	Flow     *settings.Flow // nil when no flow matches the ref
	ImageTag string         // the flow's tag for this ref
	Env      string         // the flow's environment, "" for none
}

// Native says the build_script stage is berth's, not the job's script.
func (p Plan) Native() bool { return p.Action != settings.ActionScript }

// PlanFor is the one table from (stage, ref) to action. Stages the TOML does
// not name run the job's script.
func PlanFor(s *settings.Settings, stage, refType, ref string) (Plan, error) {
	p := Plan{Action: s.Stages[stage]}
	if p.Action == "" {
		p.Action = settings.ActionScript
	}
	if !p.Native() {
		return p, nil
	}
	p.Flow = MatchFlow(s.Flows, refType, ref)
	if p.Flow == nil {
		return p, nil
	}
	tag, err := ImageTag(p.Flow.ImageTag, ref)
	if err != nil {
		return p, err
	}
	p.ImageTag, p.Env = tag, p.Flow.Environment
	return p, nil
}

// MatchFlow is the first flow whose pattern matches the whole ref name.
func MatchFlow(flows []settings.Flow, refType, ref string) *settings.Flow {
	for i := range flows {
		f := &flows[i]
		pattern := f.Branch
		if refType == api.RefTypeTag {
			pattern = f.Tag
		}
		if pattern != "" && regexp.MustCompile("^(?:"+pattern+")$").MatchString(ref) { // validated on load
			return f
		}
	}
	return nil
}

// tagRe is Docker's tag grammar.
var tagRe = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// ImageTag expands a flow's image_tag for a ref and checks Docker's tag
// grammar. ASCII uppercase folds to lowercase; anything else that cannot be
// a tag fails the job, naming the ref and the reason.
func ImageTag(template, ref string) (string, error) {
	tag := strings.ReplaceAll(template, "{ref}", ref)
	tag = strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, tag)
	if tagRe.MatchString(tag) {
		return tag, nil
	}
	var why string
	switch {
	case tag == "":
		why = "it is empty"
	case len(tag) > 128:
		why = fmt.Sprintf("it is %d characters long, at most 128 are allowed", len(tag))
	case strings.ContainsAny(tag, "/\\"):
		why = "it contains a slash"
	case strings.ContainsAny(tag, " \t\n"):
		why = "it contains white space"
	case tag[0] == '.' || tag[0] == '-':
		why = "it starts with '.' or '-'"
	default:
		why = "it has characters outside A-Z a-z 0-9 _ . -"
	}
	return "", failure.Buildf("ref %q cannot be an image tag: %s: rename the branch or tag, or set a literal image_tag for its flow in berth.toml", ref, why)
}

// Version is a release tag's version: v1.2.3-hotfix4 → 1.2.3.
func Version(tag string) string {
	v := strings.TrimPrefix(tag, "v")
	if i := strings.Index(v, "-hotfix"); i >= 0 {
		v = v[:i]
	}
	return v
}

// Candidates expands a flow's candidate tags for a git tag.
func Candidates(f *settings.Flow, tag string) []string {
	out := make([]string, 0, len(f.Candidates))
	for _, c := range f.Candidates {
		out = append(out, strings.ReplaceAll(strings.ReplaceAll(c, "{version}", Version(tag)), "{ref}", tag))
	}
	return out
}
