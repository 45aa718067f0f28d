// Package apply runs docker compose as a library for berth-compose: load the
// project as the CLI would, point services at images, up, wait. It is the
// only package that links compose; see package compose for why.
package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
	"github.com/docker/cli/cli/command"
	"github.com/docker/cli/cli/flags"
	"github.com/docker/compose/v2/pkg/api"
	composesvc "github.com/docker/compose/v2/pkg/compose"
	"github.com/docker/compose/v2/pkg/progress"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/berthci/berth/compose"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/stages/driver"
)

// Service is a compose service bound to one engine.
type Service struct {
	compose api.Compose
	engine  client.APIClient
}

// New connects to the engine c (built by the caller, with berth's ssh
// options) through a docker CLI object, as compose wants one. Without
// logins, compose pulls the project's other images anonymously: the runner's
// docker logins do not go to registries a compose file names (berth pulls
// the release itself, with its own credentials).
func New(c client.APIClient, logins bool) (*Service, error) {
	progress.Mode = progress.ModeQuiet // berth prints its own lines
	dcli, err := command.NewDockerCli(command.WithAPIClient(c), command.WithCombinedStreams(io.Discard), command.WithInputStream(io.NopCloser(strings.NewReader(""))))
	if err != nil {
		return nil, err
	}
	opts := flags.NewClientOptions()
	if !logins {
		empty, err := os.MkdirTemp("", "berth-compose-config-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(empty) // read once, by Initialize
		opts.ConfigDir = empty
	}
	if err := dcli.Initialize(opts); err != nil {
		return nil, err
	}
	return &Service{compose: composesvc.NewComposeService(dcli), engine: c}, nil
}

// Apply runs one request; a failure of the project is a Result with
// class build, an error only a failure to talk to the engine.
func (s *Service) Apply(ctx context.Context, req compose.Request) (compose.Result, error) {
	project, err := Load(ctx, req)
	if err != nil {
		return compose.Result{Answer: driver.Answer{Error: err.Error(), Class: driver.ClassInvalid}}, nil
	}
	services, err := chosen(project, req)
	if err != nil {
		return compose.Result{Answer: driver.Answer{Error: err.Error(), Class: driver.ClassInvalid}}, nil
	}
	if err := Check(project, req, services); err != nil {
		return compose.Result{Answer: driver.Answer{Error: err.Error(), Class: driver.ClassInvalid}}, nil
	}
	for _, name := range services {
		svc := project.Services[name]
		svc.Image = req.Image
		svc.Build = nil // berth built it
		if svc.Labels == nil {
			svc.Labels = types.Labels{}
		}
		for k, v := range req.Labels {
			svc.Labels[k] = v
		}
		project.Services[name] = svc
	}
	timeout := req.WaitTimeout
	err = s.compose.Up(ctx, project, api.UpOptions{
		Create: api.CreateOptions{Recreate: api.RecreateDiverged, RecreateDependencies: api.RecreateDiverged, Inherit: true, QuietPull: true, AssumeYes: true},
		Start:  api.StartOptions{Project: project, Wait: true, WaitTimeout: timeout},
	})
	if err == nil {
		return compose.Result{Services: services}, nil
	}
	if ctx.Err() != nil {
		return compose.Result{}, ctx.Err()
	}
	if failure.IsOutage(err) { // the engine, not the project
		return compose.Result{Services: services, Answer: driver.Answer{Error: fmt.Sprintf("project %s: the target engine does not answer: %v", project.Name, err), Class: driver.ClassSystem}}, nil
	}
	res := compose.Result{Services: services, Answer: driver.Answer{Error: fmt.Sprintf("project %s did not come up: %v", project.Name, err), Class: driver.ClassBuild}}
	res.Failing, res.Logs = s.failing(ctx, project.Name)
	return res, nil
}

// chosen are the services that take the image: the request's, or those
// whose image is the image's repository.
func chosen(project *types.Project, req compose.Request) ([]string, error) {
	if len(req.Services) > 0 {
		for _, name := range req.Services {
			if _, ok := project.Services[name]; !ok {
				return nil, fmt.Errorf("project %s has no service %q (check the environment's compose.services and profiles)", project.Name, name)
			}
		}
		return req.Services, nil
	}
	repo := repository(req.Image)
	var out []string
	for name, svc := range project.Services {
		if repository(svc.Image) == repo {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("no service of project %s uses %s: name the ones that take it in the environment's compose.services", project.Name, repo)
	}
	return out, nil
}

func repository(image string) string {
	n, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return image
	}
	return n.Name()
}

// Load reads the project as `docker compose` does: files, .env and env
// files from the working dir, interpolation, profiles, and the
// com.docker.compose.* labels that the CLI sets, so that `docker compose`
// by hand sees the same project.
func Load(ctx context.Context, req compose.Request) (*types.Project, error) {
	abs := func(paths []string) []string {
		out := make([]string, len(paths))
		for i, p := range paths {
			if !filepath.IsAbs(p) {
				p = filepath.Join(req.WorkingDir, p)
			}
			out[i] = p
		}
		return out
	}
	files, envFiles := abs(req.Files), abs(req.EnvFiles)
	// the files first, before compose reads any of them or what they name
	c, err := newChecker(req)
	if err != nil {
		return nil, err
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(req.WorkingDir),
		cli.WithOsEnv,
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithDefaultConfigPath,
		cli.WithDefaultProfiles(req.Profiles...),
		cli.WithName(req.Project),
	)
	if err != nil {
		return nil, fmt.Errorf("compose project %s: %w", req.Project, err)
	}
	if err := c.inFiles(opts.ConfigPaths); err != nil {
		return nil, err
	}
	if err := c.result(req.Env); err != nil {
		return nil, err // not even read
	}
	if err := c.preScan(opts.ConfigPaths, req.WorkingDir); err != nil {
		return nil, err
	}
	if err := c.result(req.Env); err != nil {
		return nil, err
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("load compose project %s from %s: %w (berth rollback reads relative compose files from the current directory: run it from a checkout of the project, or make the environment's compose.files absolute)", req.Project, req.WorkingDir, err)
	}
	for name, s := range project.Services {
		s.CustomLabels = map[string]string{
			api.ProjectLabel:     project.Name,
			api.ServiceLabel:     name,
			api.VersionLabel:     api.ComposeVersion,
			api.WorkingDirLabel:  project.WorkingDir,
			api.ConfigFilesLabel: strings.Join(project.ComposeFiles, ","),
			api.OneoffLabel:      "False",
		}
		if len(envFiles) > 0 {
			s.CustomLabels[api.EnvironmentFileLabel] = strings.Join(envFiles, ",")
		}
		project.Services[name] = s
	}
	return project.WithoutUnnecessaryResources(), nil
}

// failing finds a service whose container is not running, or not healthy,
// and its last log lines.
func (s *Service) failing(ctx context.Context, project string) (string, string) {
	ps, err := s.compose.Ps(ctx, project, api.PsOptions{All: true})
	if err != nil {
		return "", ""
	}
	for _, c := range ps {
		if c.State == "running" && (c.Health == "" || c.Health == "healthy") {
			continue
		}
		return c.Service, s.tail(ctx, c.ID, 20)
	}
	return "", ""
}

func (s *Service) tail(ctx context.Context, id string, n int) string {
	rc, err := s.engine.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(n)})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var b strings.Builder
	if _, err := stdcopy.StdCopy(&b, &b, rc); err != nil && !errors.Is(err, io.EOF) {
		return b.String()
	}
	return b.String()
}

// Ps is what `docker compose -p project ps -a` lists: each service's state.
func (s *Service) Ps(ctx context.Context, project string) (map[string]string, error) {
	ps, err := s.compose.Ps(ctx, project, api.PsOptions{All: true})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, c := range ps {
		out[c.Service] = c.State
	}
	return out, nil
}
