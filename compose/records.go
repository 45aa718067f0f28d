package compose

import (
	"encoding/json"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
)

// The deployment history lives on the target, in the environment's ledger
// (target.Ledger). The services' containers carry the current release in
// the berth.* labels too, for people and `docker compose ps`; berth reads
// them only once, to take over what an earlier berth, without a ledger,
// deployed: then the history was kept in berth.history.
const labelHistory = "berth.history"

// legacyEntry is one deployment as an earlier berth kept it in labels.
type legacyEntry struct {
	Time     time.Time `json:"time"`
	Ref      string    `json:"ref,omitempty"`
	Tag      string    `json:"tag,omitempty"`
	Digest   string    `json:"digest,omitempty"`
	Image    string    `json:"image"`
	Pipeline int64     `json:"pipeline,omitempty"`
	Job      int64     `json:"job,omitempty"`
	By       string    `json:"by,omitempty"`
	Result   string    `json:"result,omitempty"`
}

// ledgerOfLabels is the ledger an earlier berth's labels describe.
func ledgerOfLabels(env string, labels map[string]string, image string) target.Ledger {
	cur := driver.EntryOfLabels(labels, driver.ResultServing)
	if cur.Image == "" {
		cur.Image = image
	}
	l := target.Ledger{Env: env, Entries: []driver.Entry{cur}}
	var earlier []legacyEntry
	_ = json.Unmarshal([]byte(labels[labelHistory]), &earlier) // no history yet: empty
	for _, e := range earlier {
		l.Entries = append(l.Entries, driver.Entry{Time: e.Time, Ref: e.Ref, Tag: e.Tag, Digest: e.Digest, Image: e.Image,
			Pipeline: e.Pipeline, Job: e.Job, By: e.By, Result: e.Result})
	}
	return l
}
