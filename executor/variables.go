package executor

import "strings"

// JobVar is a job variable that berth reads. A job can set any variable,
// the predefined CI_* ones included (its own come after GitLab's in the
// payload), so no variable decides who the job is, which ref or project it
// runs for, or whether a gate opens: those come from the payload fields
// GitLab sets (git_info, job_info, credentials). This is the whole list of
// variables berth reads, each with why that is safe.
type JobVar string

const (
	// VarJobManual feeds the `manual` gate, which guards against accidents
	// only: a job can set it itself, and no payload field proves that a
	// person started the job. The `protected` gate is the boundary.
	VarJobManual JobVar = "CI_JOB_MANUAL"
	// VarUserLogin names who started the job in labels and the history,
	// for people to read; it decides nothing.
	VarUserLogin JobVar = "GITLAB_USER_LOGIN"
	// VarProjectURL goes into the built image's source label, for people.
	VarProjectURL JobVar = "CI_PROJECT_URL"
	// VarAction asks a deploy stage to roll back instead; a rollback passes
	// the same gates and ownership check as a deploy.
	VarAction JobVar = "BERTH_ACTION"
	// VarRollbackTo names the tag or digest a rollback returns to; only
	// versions berth recorded for the environment qualify.
	VarRollbackTo JobVar = "BERTH_ROLLBACK_TO"
	// VarDockerfile, VarContext and VarBuildArgPrefix change the build only
	// where [build] job_overrides allows it, and never reach outside the
	// checked-out sources.
	VarDockerfile     JobVar = "BERTH_DOCKERFILE"
	VarContext        JobVar = "BERTH_CONTEXT"
	VarBuildArgPrefix JobVar = "BERTH_BUILD_ARG_"
)

// Var is a job variable's value, and whether it is set; the last
// definition wins, as in the job's own shell.
func (j *Job) Var(key JobVar) (string, bool) {
	for i := len(j.Variables) - 1; i >= 0; i-- {
		if j.Variables[i].Key == string(key) {
			return j.Variables[i].Value, true
		}
	}
	return "", false
}

// VarsWithPrefix are the job's variables whose key starts with prefix, in
// payload order.
func (j *Job) VarsWithPrefix(prefix JobVar) []JobVariable {
	var out []JobVariable
	for _, v := range j.Variables {
		if strings.HasPrefix(v.Key, string(prefix)) {
			out = append(out, JobVariable{Key: v.Key, Value: v.Value, Masked: v.Masked})
		}
	}
	return out
}

// JobVariable is one variable as the build options read it.
type JobVariable struct {
	Key, Value string
	Masked     bool
}
