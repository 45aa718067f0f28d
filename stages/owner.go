package stages

import (
	"context"
	"strings"

	"github.com/berthci/berth/stages/driver"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// CheckOwner refuses a deploy or rollback job of a project that does not
// own the environment: berth.toml's projects decide, else the project that
// deployed it first, as recorded at the target. The project is the
// payload's job_info.project_full_path, which a job cannot change.
func CheckOwner(ctx context.Context, d driver.Driver, env string, e settings.Environment, project string) error {
	if len(e.Projects) > 0 {
		if settings.ProjectAllowed(e.Projects, project) {
			return nil
		}
		return failure.Buildf("environment %s belongs to %s (environments.%s.projects in berth.toml), not to %s: deploy it from one of those, or ask the runner's operator to add %s to environments.%s.projects",
			env, strings.Join(e.Projects, ", "), env, project, project, env)
	}
	owner, err := d.Owner(ctx, project)
	if err != nil {
		return err
	}
	if strings.EqualFold(owner, project) {
		return nil
	}
	return failure.Buildf("environment %s belongs to %s, the first project that deployed it (berth history %s shows it), not to %s: ask the runner's operator to set environments.%s.projects in berth.toml",
		env, owner, env, project, env)
}
