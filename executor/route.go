package executor

import "strings"

// Where a runner stage's script runs.
type Place int

const (
	// InHelper: sources, caches, artifacts and file variables, in the
	// job's helper container (helper.go), never on the runner host.
	InHelper Place = iota
	// InContainer: the job's own script, in the job container.
	InContainer
)

// Route says where the runner's stage runs. The job's own stages are
// build_script (the runner's name for step_script), the other step_* and
// after_script.
func Route(stage string) Place {
	switch {
	case stage == "build_script", stage == "after_script", strings.HasPrefix(stage, "step_"):
		return InContainer
	default:
		return InHelper
	}
}
