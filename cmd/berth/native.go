package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthci/berth/stages/containers"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/distribution/reference"
	"github.com/docker/docker/client"

	"github.com/berthci/berth/compose"
	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/kube"
	"github.com/berthci/berth/stages"
)

// credentials are the registry logins: berth.toml's, the payload's for the
// job's own project, docker's config.json (target.Credentials).
func (a *app) credentials() *target.Credentials {
	c := &target.Credentials{TOMLUser: a.settings.Registry.Username, TOMLPassword: a.settings.Registry.Password,
		DockerConfig: target.DockerConfigFile}
	if named, err := reference.ParseNormalizedNamed(strings.ReplaceAll(a.settings.Registry.Image, "{project}", "p/p")); err == nil {
		c.TOMLHost = reference.Domain(named) // as Credentials.For reads an image's host
	}
	if a.job != nil {
		c.JobHost, c.JobUser, c.JobPassword = a.job.RegistryLogin()
		c.JobProject = a.job.Project
	}
	return c
}

// driverOpener opens environments' drivers, each on its own target engine.
// dir is where a compose environment's relative files are: the checked-out
// sources in a job, the current directory for operator commands.
func (a *app) driverOpener(out io.Writer, creds *target.Credentials, dir string) func(string) (driver.Driver, error) {
	return func(name string) (driver.Driver, error) {
		env, ok := a.settings.Environments[name]
		if !ok {
			return nil, failure.Systemf("no environment %q in berth.toml", name)
		}
		host := env.DockerHost
		if host == "" {
			host = a.settings.DockerHost
		}
		switch env.Driver {
		case settings.DriverKube:
			helper, err := driver.FindHelper(kube.HelperName)
			if err != nil {
				return nil, err
			}
			return &kube.Driver{Env: name, Spec: env.Kube, Helper: helper, Out: out, Login: func(image string) *kube.Login {
				a, _, err := creds.WithoutJob().For(image)
				if err != nil || a.Username == "" {
					return nil
				}
				return &kube.Login{Server: a.ServerAddress, Username: a.Username, Password: a.Password}
			}}, nil
		case settings.DriverCompose:
			eng, err := engine.NewClient(host, env.SSHOptions...)
			if err != nil {
				return nil, failure.Systemf("environment %s: %w", name, err)
			}
			helper, err := compose.FindHelper(out)
			if err != nil {
				return nil, err
			}
			return &compose.Driver{Env: name, Spec: env.Compose, DockerHost: host, SSHOptions: env.SSHOptions,
				Engine: eng, Apply: helper, Creds: creds, Out: out, Dir: dir, Reserved: a.containerNames(),
				Pause: driver.PauseFromEnv(a.getenv, out)}, nil
		case settings.DriverContainer:
			eng, err := engine.NewClient(host, env.SSHOptions...)
			if err != nil {
				return nil, failure.Systemf("environment %s: %w", name, err)
			}
			self, _ := os.Executable() // the anchor image is made of it; without it, no anchor
			return &containers.Driver{Env: name, Spec: env.Container, Engine: eng, Creds: creds, Out: out, AnchorBinary: self,
				ProxySpec: a.settings.Proxy, Pause: driver.PauseFromEnv(a.getenv, out)}, nil
		default:
			return nil, failure.Systemf("environment %s: berth has no driver %q (environments.%s.driver in berth.toml): use %s",
				name, env.Driver, name, strings.Join(settings.Drivers(), ", "))
		}
	}
}

// containerNames are the names of the container environments' containers,
// which no compose file may take.
func (a *app) containerNames() []string {
	var names []string
	for _, env := range a.settings.Environments {
		if env.Driver == settings.DriverContainer {
			names = append(names, env.Container.Name)
		}
	}
	sort.Strings(names)
	return names
}

// workDir is the current directory, where operator commands find a compose
// environment's relative files.
func workDir() string {
	d, _ := os.Getwd()
	return d
}

// plan is the job's (stage, ref) plan.
func (a *app) plan() (stages.Plan, error) {
	return stages.PlanFor(a.settings, a.job.Stage, a.job.RefType, a.job.Ref)
}

// wireNative gives the executor its native build_script when the job's
// stage is deploy or release.
func (a *app) wireNative(ex *executor.Executor, eng *client.Client) error {
	p, err := a.plan()
	ex.Check = func() error { return err }
	if err != nil || !p.Native() {
		return nil
	}
	ex.Native = func(ctx context.Context) error {
		dir, err := a.projectDir()
		if err != nil {
			return err
		}
		creds := a.credentials()
		sleep := time.Sleep
		n := &stages.Native{
			Plan: p, Settings: a.settings, Job: a.job, ProjectDir: dir, Out: ex.Out,
			Images:   &stages.Images{Engine: eng, Creds: creds, Out: ex.Out, Retries: a.settings.Registry.Retries, Sleep: sleep},
			Registry: &stages.Registry{Creds: creds, Out: ex.Out, Retries: a.settings.Registry.Retries, Sleep: sleep},
			Envs:     &stages.Environments{Settings: a.settings, Open: a.driverOpener(ex.Out, creds, dir), Out: ex.Out},
		}
		return n.Run(ctx)
	}
	return nil
}

// projectDir is where the runner checked the sources out. The runner's
// CUSTOM_ENV_CI_PROJECT_DIR can be set by the job, so it counts only below
// the job's own builds dir.
func (a *app) projectDir() (string, error) {
	dir := filepath.Clean(a.getenv(executor.EnvProjectDir))
	root := executor.JobDir(a.settings, a.job)
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return "", failure.Buildf("the project dir %q is not below the job's builds dir %s: do not set CI_PROJECT_DIR in the job", dir, root)
	}
	return dir, nil
}

// history prints an environment's deployments.
func (a *app) history(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return failure.Systemf("usage: berth history ENV")
	}
	if err := a.loadSettings(); err != nil {
		return err
	}
	d, err := a.driverOpener(a.stdout, a.credentials(), workDir())(args[0])
	if err != nil {
		return err
	}
	recs, err := d.History(ctx)
	if err != nil {
		return err
	}
	if env := a.settings.Environments[args[0]]; len(env.Projects) > 0 {
		fmt.Fprintf(a.stdout, "# %s belongs to %s (berth.toml)\n", args[0], strings.Join(env.Projects, ", "))
	} else if owner, err := d.Owner(ctx, ""); err != nil {
		return err
	} else if owner != "" {
		fmt.Fprintf(a.stdout, "# %s belongs to %s, the first project that deployed it\n", args[0], owner)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tREF\tTAG\tPIPELINE\tJOB\tDIGEST\tBY\tRESULT\tID")
	for _, r := range recs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339), dash(r.Ref), dash(r.Tag), r.Pipeline, r.Job,
			dash(shortDigest(r.Digest)), dash(r.By), r.Result, r.ID)
	}
	return w.Flush()
}

// rollback restores an environment's previous version, or --to TAG|DIGEST.
func (a *app) rollback(ctx context.Context, args []string) error {
	var env, to string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "--to" && i+1 < len(args):
			to = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--to="):
			to = strings.TrimPrefix(args[i], "--to=")
		case env == "" && !strings.HasPrefix(args[i], "-"):
			env = args[i]
		default:
			return failure.Systemf("usage: berth rollback ENV [--to TAG|DIGEST]")
		}
	}
	if env == "" {
		return failure.Systemf("usage: berth rollback ENV [--to TAG|DIGEST]")
	}
	if err := a.loadSettings(); err != nil {
		return err
	}
	start := time.Now()
	by := a.getenv("USER")
	envs := &stages.Environments{Settings: a.settings, Open: a.driverOpener(a.stdout, a.credentials(), workDir()), Out: a.stdout}
	rec, err := envs.Rollback(ctx, stages.RollbackOptions{Env: env, To: to, By: by, Timeout: time.Hour})
	if err != nil && ctx.Err() != nil {
		joblog.Step(a.stdout, "%s: the rollback was cancelled; what served before serves again", env)
	}
	if err != nil {
		return err
	}
	joblog.Step(a.stdout, "%s rolled back in %s: runs %s (%s, %s) again", env, time.Since(start).Round(time.Millisecond), dash(rec.Tag), dash(shortDigest(rec.Digest)), rec.ID)
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// recoverDeploy is the job's cleanup for a deploy stage: when berth was
// killed mid-way (the runner's SIGKILL after graceful_kill_timeout), the
// job still holds the environment's lock; what it left half done is put
// right and the lock released.
func (a *app) recoverDeploy(ctx context.Context) error {
	p, err := a.plan()
	if err != nil || p.Action != settings.ActionDeploy || p.Env == "" {
		return nil
	}
	dir := executor.JobDir(a.settings, a.job)
	if d, err := a.projectDir(); err == nil {
		dir = d
	}
	d, err := a.driverOpener(a.stdout, a.credentials(), dir)(p.Env)
	if err != nil {
		return err
	}
	return d.Recover(ctx, a.job.ID)
}
