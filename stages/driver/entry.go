package driver

import "time"

// Entry is one deployment as a driver records it: the release and what
// became of it.
type Entry struct {
	// ID is the driver's handle: a container id for the container driver
	// (replica 1's behind the proxy, Replicas all of them).
	ID       string    `json:"id,omitempty"`
	Replicas []string  `json:"replicas,omitempty"`
	Time     time.Time `json:"time"`
	Image    string    `json:"image"`
	Digest   string    `json:"digest,omitempty"`
	Tag      string    `json:"tag,omitempty"`
	Ref      string    `json:"ref,omitempty"`
	Sha      string    `json:"sha,omitempty"`
	Pipeline int64     `json:"pipeline,omitempty"`
	Job      int64     `json:"job,omitempty"`
	By       string    `json:"by,omitempty"`
	Project  string    `json:"project,omitempty"`
	Flow     string    `json:"flow,omitempty"`
	// Result: serving, replaced, failed, rolled back by X.
	Result string `json:"result"`
	// Adopted: berth found it serving and did not deploy it.
	Adopted bool `json:"adopted,omitempty"`
}

// Results a version can have.
const (
	ResultServing     = "serving"
	ResultReplaced    = "replaced"
	ResultFailed      = "failed, previous restored"
	ResultInterrupted = "interrupted, previous restored"
)

// RolledBackBy is the result of a version that a rollback replaced.
func RolledBackBy(by string) string { return "rolled back by " + by }

// EntryOf is the ledger entry of a release.
func EntryOf(r Release, id, result string) Entry {
	return Entry{ID: id, Time: time.Now().UTC(), Image: r.Image, Digest: r.Digest, Tag: r.Tag, Ref: r.Ref, Sha: r.Sha,
		Pipeline: r.Pipeline, Job: r.Job, By: r.By, Project: r.Project, Flow: r.Flow, Result: result}
}

// Record is the version as a line of history.
func (v Entry) Record() Record {
	r := Record{Time: v.Time, Ref: v.Ref, Tag: v.Tag, Digest: v.Digest, Pipeline: v.Pipeline, Job: v.Job, By: v.By, Result: v.Result, ID: v.ID, Flow: v.Flow}
	if v.Adopted {
		r.Result += " (adopted: started by hand)"
	}
	return r
}
