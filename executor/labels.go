package executor

import (
	"strconv"
	"time"

	"github.com/docker/docker/api/types/filters"

	"github.com/berthci/berth/executor/engine"
)

// Labels berth puts on everything it creates for a job, so cleanup and sweep
// find it again from the engine alone.
const (
	LabelJob      = "berth.job"      // job id
	LabelPipeline = "berth.pipeline" // pipeline id
	LabelProject  = "berth.project"  // project full path
	LabelRole     = engine.LabelRole // "job" or "service"
	LabelDeadline = "berth.deadline" // RFC 3339; past it the job is surely over
	LabelVersion  = "berth.version"  // berth version that made it

	RoleJob     = "job"
	RoleService = "service"
)

// deadlineMargin is added to the job timeout: the runner needs time after a
// timeout to run after_script and cleanup.
const deadlineMargin = 15 * time.Minute

// Names of what berth creates for a job.
func ContainerName(j *Job) string { return containerNameOf(j.IDString()) }
func NetworkName(j *Job) string   { return containerNameOf(j.IDString()) }

func containerNameOf(jobID string) string { return "berth-job-" + jobID }

// HelpersNetwork is where the helpers of native stages, which have no job
// container whose network they could join, are: one network kept for all
// of them, with traffic between its containers off, so that one job's
// helper cannot reach another's. A network of its own per job would cost
// each native job ~0.3 s more (made, first endpoint, removed).
const HelpersNetwork = "berth-helpers"

// RoleHelpers labels the helpers network.
const RoleHelpers = "helpers"

func (e *Executor) labels(role string) map[string]string {
	return map[string]string{
		LabelJob:      e.Job.IDString(),
		LabelPipeline: strconv.FormatInt(e.Job.Pipeline, 10),
		LabelProject:  e.Job.Project,
		LabelRole:     role,
		LabelDeadline: e.Now().Add(e.Job.Timeout + deadlineMargin).UTC().Format(time.RFC3339),
		LabelVersion:  e.Version,
	}
}

// jobFilter selects what belongs to this job.
func (e *Executor) jobFilter() filters.Args {
	return filters.NewArgs(filters.Arg("label", LabelJob+"="+e.Job.IDString()))
}
