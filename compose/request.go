// Package compose is the `compose` environment driver: the team's own
// compose project on a Docker host, some of whose services take each new
// release by digest.
//
// docker compose as a library costs ~40 ms of package init per process, so
// it lives in its own binary, berth-compose (package compose/apply), which
// this package runs for the one step that needs it: bring the project up and
// wait. Everything else (lock, records, history, rollback target) is plain
// Engine API here, so berth's other invocations stay fast.
package compose

import (
	"context"
	"time"

	"github.com/berthci/berth/stages/driver"
)

// Request asks berth-compose to bring a project up with some services on
// given images, and wait until it runs.
type Request struct {
	DockerHost string   `json:"docker_host,omitempty"`
	SSHOptions []string `json:"ssh_options,omitempty"`

	Env        string   `json:"env"` // the environment, for messages
	Project    string   `json:"project"`
	WorkingDir string   `json:"working_dir"` // where relative files, env files and .env are found
	Files      []string `json:"files,omitempty"`
	EnvFiles   []string `json:"env_files,omitempty"`
	Profiles   []string `json:"profiles,omitempty"`

	// Image is what Services take, with Labels; no Services means every
	// service whose image is Image's repository.
	Image       string            `json:"image"`
	Services    []string          `json:"services,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	WaitTimeout time.Duration     `json:"wait_timeout"`
	// Allow is what the project's compose file may use that berth refuses
	// by default (settings.ComposeAllowances).
	Allow []string `json:"allow,omitempty"`
	// Reserved are container names berth uses on the target, which the
	// compose file must not take.
	Reserved []string `json:"reserved,omitempty"`
}

// Result is berth-compose's answer.
type Result struct {
	// Answer is why the project did not come up, empty on success; its
	// class says whose fault it is and what changed: driver.ClassInvalid,
	// the project did not load or was refused and nothing changed;
	// ClassBuild, it did not come up; ClassSystem, the engine did not
	// answer.
	driver.Answer
	// Failing is the service that did not come up, and Logs its last lines.
	Failing string `json:"failing,omitempty"`
	Logs    string `json:"logs,omitempty"`
	// Services are the ones that took the image.
	Services []string `json:"services,omitempty"`
}

// Applier runs a Request: the berth-compose binary (Helper), or
// compose/apply in process (tests).
type Applier interface {
	Apply(ctx context.Context, req Request) (Result, error)
}
