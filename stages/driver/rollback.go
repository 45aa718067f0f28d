package driver

import (
	"strings"

	"github.com/berthci/berth/executor/failure"
)

// RollbackCandidate is a version a rollback may return to.
type RollbackCandidate struct {
	Tag, Digest, Image string
	// Failed versions never served; Current is what serves now.
	Failed, Current bool
}

// ChooseRollback is the version a rollback returns to, by index, and
// whether there is one: with to empty, the newest (first) one that did not
// fail and is not what serves; else the one whose tag or digest is to, or
// whose image is pinned to that digest. Every driver chooses this way.
func ChooseRollback(cands []RollbackCandidate, to string) (int, bool) {
	for i, c := range cands {
		if c.Current || c.Failed {
			continue
		}
		if to == "" || c.Tag == to || c.Digest == to || (strings.HasPrefix(to, "sha256:") && strings.Contains(c.Image, "@"+to)) {
			return i, true
		}
	}
	return 0, false
}

// Candidate is an entry as a rollback candidate, when the image serving
// runs: a version that never served (failed, interrupted) is never one,
// nor is the one that serves or one of the same image.
func (e Entry) Candidate(serving string) RollbackCandidate {
	return RollbackCandidate{Tag: e.Tag, Digest: e.Digest, Image: e.Image,
		Failed:  e.Result == ResultFailed || e.Result == ResultInterrupted,
		Current: e.Result == ResultServing || (serving != "" && e.Image == serving)}
}

// ChooseEntry is ChooseRollback over recorded entries, when the image
// serving runs.
func ChooseEntry(entries []Entry, serving, to string) (int, bool) {
	cands := make([]RollbackCandidate, len(entries))
	for i, e := range entries {
		cands[i] = e.Candidate(serving)
	}
	return ChooseRollback(cands, to)
}

// NoRollback is the error of a rollback that found nothing to return to:
// to when one was asked for, else what (the default, "a previous version").
func NoRollback(env, to, what string) error {
	if to != "" {
		what = to
	}
	return failure.Buildf("the history of %s holds no %s to roll back to (berth history %s lists it): deploy it instead", env, what, env)
}
