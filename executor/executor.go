package executor

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
)

// Engine is the part of the Docker Engine API the executor uses; the real
// *client.Client satisfies it.
type Engine interface {
	ImageInspect(ctx context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, opts image.PullOptions) (io.ReadCloser, error)
	NetworkCreate(ctx context.Context, name string, opts network.CreateOptions) (network.CreateResponse, error)
	NetworkList(ctx context.Context, opts network.ListOptions) ([]network.Summary, error)
	NetworkRemove(ctx context.Context, id string) error
	ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, net *network.NetworkingConfig, platform *ocispec.Platform, name string) (container.CreateResponse, error)
	ContainerStart(ctx context.Context, id string, opts container.StartOptions) error
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
	ContainerRemove(ctx context.Context, id string, opts container.RemoveOptions) error
	ContainerKill(ctx context.Context, id, signal string) error
	ContainerWait(ctx context.Context, id string, condition container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerLogs(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error)
	ContainerExecCreate(ctx context.Context, id string, opts container.ExecOptions) (container.ExecCreateResponse, error)
	ContainerExecAttach(ctx context.Context, execID string, opts container.ExecAttachOptions) (types.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, execID string) (container.ExecInspect, error)
}

// Executor runs one job's protocol calls. It owns nothing global: main builds
// the engine client and the settings once and passes them in.
type Executor struct {
	Engine   Engine
	Settings *settings.Settings
	Job      *Job
	// Out is the job log: stdout of prepare and run, which the runner
	// streams to GitLab. Everything written to it goes through the redactor.
	Out io.Writer
	// ScriptOut and ScriptErr take a stage's own output: stdout and stderr
	// of `berth run`, which the runner streams to the job log.
	ScriptOut, ScriptErr io.Writer
	// Log is the operator log (logrus on stderr or the TOML's log_file).
	Log     logrus.FieldLogger
	Version string
	// LocalEngine says the engine runs on this host, so container IPs are
	// reachable for the service port wait.
	LocalEngine bool
	// RunnerBinary is the static gitlab-runner mounted into the helper
	// container; empty uses the helper image's own.
	RunnerBinary string
	// Refill has the spare network namespaces of native helpers made
	// again and the used ones removed, those of afterJob (if set), whose
	// cleanup stopped its helper, included; off the job's way (main
	// starts `berth spares` detached).
	Refill func(afterJob string)
	// SelfBinary is berth's own static binary, which serves the helper
	// container's stages; empty runs each with a docker exec.
	SelfBinary string
	// Native, when set, performs the build_script stage in place of the
	// job's script (a deploy or release stage).
	Native func(ctx context.Context) error
	// Check runs at the start of prepare and fails the job before anything
	// is created (a ref that cannot be deployed, say).
	Check    func() error
	Now      func() time.Time
	redactor *Redactor
}

// New builds an executor for one job; out is wrapped so that nothing berth
// writes to the job log can carry a secret.
func New(engine Engine, s *settings.Settings, job *Job, out io.Writer, log logrus.FieldLogger, version string) *Executor {
	r := NewRedactor(job.Secrets())
	return &Executor{
		Engine: engine, Settings: s, Job: job, Out: r.Writer(out), Log: log,
		ScriptOut: os.Stdout, ScriptErr: os.Stderr,
		Version: version, Now: time.Now, redactor: r,
	}
}

// JobDir is the job's own directory under the builds dir; the runner checks
// the project out below it and the job container sees it at the same path.
func JobDir(s *settings.Settings, j *Job) string {
	return filepath.Join(s.BuildsDir, j.IDString())
}

// stepf writes one step line of the job log.
func (e *Executor) stepf(format string, args ...any) {
	joblog.Step(e.Out, format, args...)
}

func since(t time.Time) string {
	return time.Since(t).Round(time.Millisecond).String()
}
