package compose

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/berthci/berth/stages"
)

// The deployment history lives on the target, in labels of the services
// that take the release: the current release in the berth.* labels that the
// container driver uses too, the earlier ones in berth.history.
const labelHistory = "berth.history"

// entry is one deployment, as kept in labels.
type entry struct {
	Time     time.Time `json:"time"`
	Ref      string    `json:"ref,omitempty"`
	Tag      string    `json:"tag,omitempty"`
	Digest   string    `json:"digest,omitempty"`
	Image    string    `json:"image"`
	Pipeline int64     `json:"pipeline,omitempty"`
	Job      int64     `json:"job,omitempty"`
	By       string    `json:"by,omitempty"`
	Result   string    `json:"result,omitempty"` // for earlier ones: replaced, failed..., rolled back by X
}

func entryOf(r stages.Release) entry {
	return entry{Time: time.Now().UTC(), Ref: r.Ref, Tag: r.Tag, Digest: r.Digest, Image: r.Image, Pipeline: r.Pipeline, Job: r.Job, By: r.By}
}

// state is what a service's container says about the environment.
type state struct {
	current entry
	earlier []entry // newest first
}

func stateOf(labels map[string]string, image string) state {
	e := entry{
		Ref: labels[stages.LabelRef], Tag: labels[stages.LabelTag], Digest: labels[stages.LabelDigest],
		Image: labels[stages.LabelImage], By: labels[stages.LabelBy],
	}
	if e.Image == "" { // not deployed by berth yet
		e.Image = image
	}
	e.Pipeline, _ = strconv.ParseInt(labels[stages.LabelPipeline], 10, 64)
	e.Job, _ = strconv.ParseInt(labels[stages.LabelJob], 10, 64)
	e.Time, _ = time.Parse(time.RFC3339, labels[stages.LabelDeployed])
	s := state{current: e}
	_ = json.Unmarshal([]byte(labels[labelHistory]), &s.earlier) // no history yet: empty
	return s
}

// labels renders a state for the services' containers, the history cut to
// keep entries.
func (s state) labels(env string, keep int) map[string]string {
	e := s.current
	earlier := s.earlier
	if len(earlier) > keep {
		earlier = earlier[:keep]
	}
	hist, _ := json.Marshal(earlier)
	return map[string]string{
		stages.LabelEnv: env, stages.LabelRef: e.Ref, stages.LabelTag: e.Tag, stages.LabelDigest: e.Digest,
		stages.LabelImage: e.Image, stages.LabelPipeline: strconv.FormatInt(e.Pipeline, 10),
		stages.LabelJob: strconv.FormatInt(e.Job, 10), stages.LabelBy: e.By,
		stages.LabelDeployed: e.Time.UTC().Format(time.RFC3339), labelHistory: string(hist),
	}
}

// then is the state after next replaces the current entry, which is
// remembered with result.
func (s state) then(next entry, result string) state {
	prev := s.current
	prev.Result = result
	return state{current: next, earlier: append([]entry{prev}, s.earlier...)}
}

func (e entry) record(result string) stages.Record {
	if result == "" {
		result = e.Result
	}
	return stages.Record{Time: e.Time, Ref: e.Ref, Tag: e.Tag, Digest: e.Digest, Pipeline: e.Pipeline, Job: e.Job, By: e.By, Result: result, ID: e.Image}
}
