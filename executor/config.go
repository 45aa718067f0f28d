package executor

import (
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/settings"
)

// DriverName is how the runner's job log names the executor.
const DriverName = "berth"

// ConfigFor is what `berth config` prints. Each job gets its own builds dir,
// named by the job id from the payload, so a job's sources are never shared
// with another and the path cannot be steered by job variables; and its
// project's own cache dir, so no job reads another project's caches.
func ConfigFor(s *settings.Settings, job *Job, version, hostname string) api.ConfigOutput {
	return api.ConfigOutput{
		BuildsDir:         JobDir(s, job),
		CacheDir:          CacheDirFor(s, job),
		BuildsDirIsShared: false,
		Hostname:          hostname,
		Driver:            api.Driver{Name: DriverName, Version: version},
		Shell:             "bash",
	}
}
