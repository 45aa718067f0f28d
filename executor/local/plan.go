package local

import (
	"fmt"
	"sort"
	"strings"
)

// Planned is a job of a pipeline as its rules made it.
type Planned struct {
	Job          *CIJob
	When         string // on_success, manual, always, on_failure
	AllowFailure allowFailure
	Variables    []Var // the rule's, over the job's
	// Needs are the planned jobs it waits for: its needs, or every job of
	// the stages before (nil for needs: []).
	Needs []*Planned
	Level int // when it can start, counting the jobs it waits for
}

// Plan is the jobs a pipeline runs, in the order they can start.
type Plan struct {
	Jobs []*Planned
	// Skipped says why the workflow runs no pipeline, "" when it does.
	Skipped string
	vars    []Var // workflow: rules variables
}

// Plan decides which jobs run for ctx, and how: workflow rules, then each
// job's rules, only and except.
func (p *Pipeline) Plan(ctx *Context) (*Plan, error) {
	pl := &Plan{}
	if p.workflow != nil {
		r := ctx.firstRule(p.workflow, p.Variables)
		if r == nil || r.when == "never" {
			pl.Skipped = "the workflow rules of " + p.File + " run no pipeline for " + refText(ctx.Ref)
			return pl, nil
		}
		pl.vars = r.variables
	}
	byName := map[string]*Planned{}
	for _, j := range p.Jobs {
		pj := p.decide(ctx, j, pl.vars)
		if pj == nil || j.Trigger {
			continue
		}
		pl.Jobs = append(pl.Jobs, pj)
		byName[j.Name] = pj
	}
	// needs, then the order they can start in
	for _, pj := range pl.Jobs {
		j := pj.Job
		switch {
		case j.Needs != nil:
			pj.Needs = []*Planned{}
			for _, nd := range j.Needs {
				found := false
				for _, other := range pl.Jobs {
					if other.Job.Name == nd.Job || (other.Job.Parallel != nil && other.Job.Parallel.Base == nd.Job) {
						pj.Needs = append(pj.Needs, other)
						found = true
					}
				}
				if !found && !nd.Optional && !p.hasJob(nd.Job) {
					return nil, fmt.Errorf("%s: job %s needs %q, which is no job of the pipeline", j.file, j.Name, nd.Job)
				}
				if !found && !nd.Optional {
					return nil, fmt.Errorf("job %s needs %s, which does not run for %s (add optional: true, or see its rules)", j.Name, nd.Job, refText(ctx.Ref))
				}
			}
		default:
			for _, other := range pl.Jobs {
				if indexOf(p.Stages, other.Job.Stage) < indexOf(p.Stages, j.Stage) {
					pj.Needs = append(pj.Needs, other)
				}
			}
		}
	}
	for _, pj := range pl.Jobs {
		if err := pl.level(pj, nil); err != nil {
			return nil, err
		}
	}
	sort.SliceStable(pl.Jobs, func(a, b int) bool {
		if pl.Jobs[a].Level != pl.Jobs[b].Level {
			return pl.Jobs[a].Level < pl.Jobs[b].Level
		}
		return indexOf(p.Stages, pl.Jobs[a].Job.Stage) < indexOf(p.Stages, pl.Jobs[b].Job.Stage)
	})
	return pl, nil
}

func (p *Pipeline) hasJob(name string) bool {
	for _, j := range p.Jobs {
		if j.Name == name || (j.Parallel != nil && j.Parallel.Base == name) {
			return true
		}
	}
	return false
}

// level is how many jobs pj waits for in a row.
func (pl *Plan) level(pj *Planned, seen []*Planned) error {
	for _, s := range seen {
		if s == pj {
			return fmt.Errorf("needs go round in a circle through job %s", pj.Job.Name)
		}
	}
	lvl := 0
	for _, n := range pj.Needs {
		if err := pl.level(n, append(seen, pj)); err != nil {
			return err
		}
		if n.Level+1 > lvl {
			lvl = n.Level + 1
		}
	}
	pj.Level = lvl
	return nil
}

// decide plans job j for ctx, or nil when it does not run.
func (p *Pipeline) decide(ctx *Context, j *CIJob, wfVars []Var) *Planned {
	pj := &Planned{Job: j, When: j.When, AllowFailure: j.AllowFailure}
	layers := [][]Var{p.Variables, wfVars, j.Variables}
	if j.rules != nil {
		r := ctx.firstRule(j.rules, layers...)
		if r == nil || r.when == "never" {
			return nil
		}
		if r.when != "" {
			pj.When = r.when
		}
		if r.allowFailure != nil {
			pj.AllowFailure = allowFailure{allowed: *r.allowFailure, exitCodes: r.exitCodes}
		}
		pj.Variables = r.variables
	} else {
		vars := ctx.vars(layers...)
		only := j.only
		if only.empty() {
			only = &refFilter{refs: []string{"branches", "tags"}}
		}
		if !only.match(ctx, vars) {
			return nil
		}
		if !j.except.empty() && j.except.match(ctx, vars) {
			return nil
		}
		if pj.When == "manual" && !j.allowFailureGiven {
			pj.AllowFailure = allowFailure{allowed: true} // a manual job without rules may fail, as on GitLab
		}
	}
	if pj.When == "never" {
		return nil
	}
	return pj
}

// Vars are the planned job's variables: the file's and the job's, then
// the workflow's and its rule's.
func (pl *Plan) Vars(pj *Planned) []Var {
	return append(append(append([]Var(nil), pj.Job.Variables...), pl.vars...), pj.Variables...)
}

// Listing is the plan as `berth exec --list` prints it: STAGE JOB in the
// order they start, manual ones marked, and what berth exec will not do.
func (pl *Plan) Listing() string {
	var b strings.Builder
	for _, pj := range pl.Jobs {
		fmt.Fprintf(&b, "%s %s", pj.Job.Stage, pj.Job.Name)
		switch pj.When {
		case "manual":
			b.WriteString(" (manual)")
		case "always":
			b.WriteString(" (always)")
		case "on_failure":
			b.WriteString(" (on failure)")
		}
		b.WriteString("\n")
		for _, n := range pj.Job.Notes {
			fmt.Fprintf(&b, "    note: %s\n", n)
		}
	}
	return b.String()
}

func refText(r Ref) string {
	if r.IsTag {
		return "tag " + r.Name
	}
	return "branch " + r.Name
}
