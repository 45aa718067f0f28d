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
func ContainerName(j *Job) string { return "berth-job-" + j.IDString() }
func NetworkName(j *Job) string   { return "berth-job-" + j.IDString() }

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
