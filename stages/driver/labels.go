package driver

import (
	"strconv"
	"time"
)

// The labels (on Docker) and annotations (on Kubernetes) that say, where a
// release runs, what it is: one set of keys and one codec for every
// driver. People read them (docker ps, kubectl); berth reads them only to
// take over what an earlier berth deployed, and the kube driver's history.
const (
	LabelEnv      = "berth.env"
	LabelRef      = "berth.ref"
	LabelTag      = "berth.tag"
	LabelDigest   = "berth.digest"
	LabelImage    = "berth.image"
	LabelPipeline = "berth.pipeline"
	LabelJob      = "berth.job.deployed" // the job that deployed it
	LabelBy       = "berth.by"
	LabelDeployed = "berth.deployed"
	LabelFlow     = "berth.flow"

	// legacyLabelJob is where earlier berths put the job on Kubernetes.
	legacyLabelJob = "berth.job"
)

// LabelKeys are every key Labels writes, and the legacy ones
// EntryOfLabels reads: what goes back when a release is restored.
func LabelKeys() []string {
	return []string{LabelEnv, LabelRef, LabelTag, LabelDigest, LabelImage, LabelPipeline, LabelJob, LabelBy, LabelDeployed, LabelFlow, legacyLabelJob}
}

// Labels renders an entry of env for labels or annotations.
func Labels(env string, e Entry) map[string]string {
	l := map[string]string{
		LabelEnv: env, LabelRef: e.Ref, LabelTag: e.Tag, LabelDigest: e.Digest, LabelImage: e.Image,
		LabelPipeline: strconv.FormatInt(e.Pipeline, 10), LabelJob: strconv.FormatInt(e.Job, 10),
		LabelBy: e.By, LabelFlow: e.Flow,
	}
	if !e.Time.IsZero() {
		l[LabelDeployed] = e.Time.UTC().Format(time.RFC3339)
	}
	return l
}

// EntryOfLabels reads an entry back from labels or annotations, with a
// result; the time is zero where they do not say.
func EntryOfLabels(l map[string]string, result string) Entry {
	e := Entry{Ref: l[LabelRef], Tag: l[LabelTag], Digest: l[LabelDigest], Image: l[LabelImage], By: l[LabelBy], Flow: l[LabelFlow], Result: result}
	e.Pipeline, _ = strconv.ParseInt(l[LabelPipeline], 10, 64)
	job := l[LabelJob]
	if job == "" {
		job = l[legacyLabelJob]
	}
	e.Job, _ = strconv.ParseInt(job, 10, 64)
	e.Time, _ = time.Parse(time.RFC3339, l[LabelDeployed])
	return e
}
