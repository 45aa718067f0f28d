package compose

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/berthci/berth/stages"
)

// The deployment history lives on the target, in the environment's ledger
// (stages.Ledger). The services' containers carry the current release in
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
func ledgerOfLabels(env string, labels map[string]string, image string) stages.Ledger {
	cur := stages.Entry{
		Ref: labels[stages.LabelRef], Tag: labels[stages.LabelTag], Digest: labels[stages.LabelDigest],
		Image: labels[stages.LabelImage], By: labels[stages.LabelBy], Result: stages.ResultServing,
	}
	if cur.Image == "" {
		cur.Image = image
	}
	cur.Pipeline, _ = strconv.ParseInt(labels[stages.LabelPipeline], 10, 64)
	cur.Job, _ = strconv.ParseInt(labels[stages.LabelJob], 10, 64)
	cur.Time, _ = time.Parse(time.RFC3339, labels[stages.LabelDeployed])
	l := stages.Ledger{Env: env, Entries: []stages.Entry{cur}}
	var earlier []legacyEntry
	_ = json.Unmarshal([]byte(labels[labelHistory]), &earlier) // no history yet: empty
	for _, e := range earlier {
		l.Entries = append(l.Entries, stages.Entry{Time: e.Time, Ref: e.Ref, Tag: e.Tag, Digest: e.Digest, Image: e.Image,
			Pipeline: e.Pipeline, Job: e.Job, By: e.By, Result: e.Result})
	}
	return l
}

// labelsOf renders the serving entry for the services' containers.
func labelsOf(env string, e stages.Entry) map[string]string {
	return map[string]string{
		stages.LabelEnv: env, stages.LabelRef: e.Ref, stages.LabelTag: e.Tag, stages.LabelDigest: e.Digest,
		stages.LabelImage: e.Image, stages.LabelPipeline: strconv.FormatInt(e.Pipeline, 10),
		stages.LabelJob: strconv.FormatInt(e.Job, 10), stages.LabelBy: e.By,
		stages.LabelDeployed: e.Time.UTC().Format(time.RFC3339),
	}
}
