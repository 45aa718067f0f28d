package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/docker/docker/client"
	"github.com/sirupsen/logrus"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/containers/proxy"
)

// app holds what one invocation reads once: settings, job, clients.
type app struct {
	stdout, stderr io.Writer
	configPath     string
	getenv         func(string) string
	settings       *settings.Settings
	source         settings.Source
	job            *executor.Job
	redactor       *executor.Redactor
}

func (a *app) dispatch(ctx context.Context, cmd string, args []string) error {
	switch cmd {
	case "version":
		if len(args) != 0 {
			return failure.Systemf("version takes no arguments")
		}
		fmt.Fprintf(a.stdout, "berth %s\n", version)
		return nil
	case "check":
		if len(args) != 0 {
			return failure.Systemf("check takes no arguments but --config FILE")
		}
		return a.check()
	case "config":
		return a.config()
	case "prepare", "cleanup":
		if len(args) != 0 {
			return failure.Systemf("%s takes no arguments", cmd)
		}
		ex, err := a.executor()
		if err != nil {
			return err
		}
		if cmd == "prepare" {
			return ex.Prepare(ctx)
		}
		rerr := a.recoverDeploy(context.WithoutCancel(ctx))
		if rerr != nil {
			ex.Log.WithError(rerr).Warnf("job %d: put right what its deploy left", a.job.ID)
		}
		return errors.Join(rerr, ex.Cleanup(ctx))
	case "run":
		if len(args) != 2 {
			return failure.Systemf("usage: berth run SCRIPT STAGE")
		}
		ex, err := a.executor()
		if err != nil {
			return err
		}
		return ex.Run(ctx, args[0], args[1], a.getenv(executor.EnvBuildExitCodeFile))
	case "sweep":
		return a.sweep(ctx, args)
	case "spares":
		// started detached by prepare and cleanup (executor/spares.go)
		afterJob := ""
		if len(args) == 2 && args[0] == "--after-job" {
			afterJob, args = args[1], nil
		}
		if len(args) != 0 {
			return failure.Systemf("usage: berth spares [--after-job ID]")
		}
		return a.spares(ctx, afterJob)
	case "history":
		return a.history(ctx, args)
	case "rollback":
		return a.rollback(ctx, args)
	case "exec":
		return a.exec(ctx, args)
	case "helper":
		// PID 1's child in a job's helper container (executor/helperserve.go):
		// it runs the runner's stages sent over its socket
		if len(args) != 2 {
			return failure.Systemf("usage: berth helper SOCKET DIR (run by the helper container)")
		}
		return executor.ServeHelper(ctx, args[0], args[1])
	case "proxy":
		// in NAME-ctl beside an environment proxy (stages/containers/proxy):
		// berth's side of Caddy's admin API, run through the Engine API
		return proxy.Ctl(ctx, proxy.AdminURL, args, os.Stdin, a.stdout)
	case "archive":
		// in a job's helper container, for berth exec's artifacts and caches
		return a.archive(args)
	case "anchor":
		// PID 1 of an environment's anchor container (stages/anchor.go):
		// it only holds the network namespace, until stopped.
		<-ctx.Done()
		return nil
	default:
		return failure.Systemf("unknown command %q (run berth --help)", cmd)
	}
}

// loadSettings reads berth.toml once and sets up the operator log.
func (a *app) loadSettings() error {
	s, src, err := settings.Load(a.configPath, a.getenv)
	if err != nil {
		return failure.System(err)
	}
	a.settings, a.source = s, src
	return nil
}

func (a *app) logger() (logrus.FieldLogger, error) { return a.loggerTo(a.stderr) }

// loggerTo is the operator log: log_file when set, else w.
func (a *app) loggerTo(w io.Writer) (logrus.FieldLogger, error) {
	l := logrus.New()
	l.SetOutput(w)
	if f := a.settings.LogFile; f != "" {
		out, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, failure.Systemf("open log_file %s: %w", f, err)
		}
		l.SetOutput(out)
	}
	lvl, _ := logrus.ParseLevel(a.settings.LogLevel) // validated on load
	l.SetLevel(lvl)
	if a.redactor != nil {
		l.SetOutput(a.redactor.Writer(l.Out))
	}
	return l, nil
}

func (a *app) loadJob() error {
	job, err := executor.LoadJob(a.getenv(executor.EnvJobResponse))
	if err != nil {
		return err
	}
	a.job = job
	a.redactor = executor.NewRedactor(job.Secrets())
	return nil
}

func (a *app) redact(s string) string { return a.redactor.String(s) }

func (a *app) config() error {
	if err := a.loadSettings(); err != nil {
		return err
	}
	if err := a.loadJob(); err != nil {
		return err
	}
	host, _ := os.Hostname()
	return json.NewEncoder(a.stdout).Encode(executor.ConfigFor(a.settings, a.job, version, host))
}

// executor builds the engine client and the executor for a job command.
func (a *app) executor() (*executor.Executor, error) {
	if err := a.loadSettings(); err != nil {
		return nil, err
	}
	if err := a.loadJob(); err != nil {
		return nil, err
	}
	log, err := a.logger()
	if err != nil {
		return nil, err
	}
	eng, local, err := a.engine()
	if err != nil {
		return nil, err
	}
	ex := executor.New(eng, a.settings, a.job, a.stdout, log, version)
	ex.ScriptOut, ex.ScriptErr = a.stdout, a.stderr // the runner's (or berth exec's) job log
	ex.LocalEngine = local
	if self, err := os.Executable(); err == nil && executor.IsStatic(self) {
		ex.SelfBinary = self // serves the helper container's stages
	}
	ex.Refill = a.spawnSpares
	var why string
	ex.RunnerBinary, why = executor.FindRunnerBinary(a.settings.Job.RunnerBinary, os.Getppid(), exec.LookPath)
	if why != "" {
		if a.settings.Job.RunnerBinary != "" {
			return nil, failure.Systemf("job.runner_binary: %s: name a static gitlab-runner, or set it to %q to use the helper image's own", why, settings.RunnerBinaryImage)
		}
		log.Infof("helper containers use job.helper_image's own gitlab-runner: %s", why)
	}
	return ex, a.wireNative(ex, eng)
}

// engine is the Docker client for job containers: berth.toml's docker_host,
// else DOCKER_HOST and friends, else the local socket.
func (a *app) engine() (*client.Client, bool, error) {
	c, err := engine.NewClient(a.settings.DockerHost)
	if err != nil {
		return nil, false, failure.Systemf("docker client: %w (check docker_host in berth.toml or DOCKER_HOST)", err)
	}
	host := c.DaemonHost()
	return c, strings.HasPrefix(host, "unix://"), nil
}

func (a *app) check() error {
	if err := a.loadSettings(); err != nil {
		return err
	}
	from := a.source.Reason
	if a.source.Path != "" {
		from = a.source.Path + " (" + a.source.Reason + ")"
	}
	fmt.Fprintf(a.stdout, "# berth %s: settings from %s are valid\n", version, from)
	for _, w := range a.settings.Warnings() {
		fmt.Fprintf(a.stdout, "# warning: %s\n", w)
	}
	if w := sparesTrouble(a.settings); w != "" {
		fmt.Fprintf(a.stdout, "# warning: %s\n", w)
	}
	fmt.Fprintf(a.stdout, "# effective settings (passwords, env values and build args shown as %s), each with where it comes from:\n", settings.Masked)
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(a.settings.Redacted()); err != nil {
		return failure.Systemf("print the settings: %w", err)
	}
	var data []byte
	if a.source.Path != "" {
		data, _ = os.ReadFile(a.source.Path)
	}
	fmt.Fprint(a.stdout, settings.Annotate(b.String(), a.source.Path, data))
	return nil
}

func (a *app) sweep(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sweep", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	olderThan := fs.Duration("older-than", 0, "also remove job resources older than this (e.g. 3h)")
	dryRun := fs.Bool("dry-run", false, "list what would be removed")
	project := fs.String("project", "", "only this project's jobs (full path, group/app)")
	if err := fs.Parse(args); err != nil {
		return failure.System(err)
	}
	if err := a.loadSettings(); err != nil {
		return err
	}
	eng, _, err := a.engine()
	if err != nil {
		return err
	}
	sw := &executor.Sweeper{Engine: eng, Settings: a.settings, Now: time.Now}
	res, err := sw.Sweep(ctx, executor.SweepOptions{OlderThan: *olderThan, Project: *project, DryRun: *dryRun})
	verb := "removed"
	if *dryRun {
		verb = "would remove"
	}
	for _, c := range res.Containers {
		fmt.Fprintf(a.stdout, "%s container %s\n", verb, c)
	}
	for _, n := range res.Networks {
		fmt.Fprintf(a.stdout, "%s network %s\n", verb, n)
	}
	for _, d := range res.Dirs {
		fmt.Fprintf(a.stdout, "%s builds dir %s\n", verb, d)
	}
	fmt.Fprintf(a.stdout, "sweep: %s %d containers, %d networks, %d builds dirs\n", verb, len(res.Containers), len(res.Networks), len(res.Dirs))
	if err != nil {
		return failure.Systemf("sweep went on past what it could not remove: %w", err)
	}
	return nil
}

// spawnSpares starts `berth spares` detached: a session of its own and no
// stdio, so the runner, which waits for this process and its output, does
// not wait for it. It gets the runner's environment without the job's
// variables and payload.
func (a *app) spawnSpares(afterJob string) {
	self, err := os.Executable()
	if err != nil {
		return
	}
	args := []string{"spares"}
	if afterJob != "" {
		args = append(args, "--after-job", afterJob)
	}
	if a.configPath != "" {
		args = append(args, "--config", a.configPath)
	}
	cmd := exec.Command(self, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CUSTOM_ENV_") && !strings.HasPrefix(kv, executor.EnvJobResponse+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err == nil {
		_ = cmd.Process.Release()
	}
}

// spares is `berth spares`: one at a time on this host, it puts the
// helpers' spare network namespaces right (executor.Spares).
func (a *app) spares(ctx context.Context, afterJob string) error {
	if err := a.loadSettings(); err != nil {
		return err
	}
	if err := os.MkdirAll(a.settings.BuildsDir, 0o755); err != nil {
		return failure.Systemf("create builds_dir %s: %w", a.settings.BuildsDir, err)
	}
	lock, err := os.OpenFile(filepath.Join(a.settings.BuildsDir, ".berth-spares.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return failure.Systemf("open the spares lock in builds_dir: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return failure.Systemf("lock the spares lock in builds_dir: %w", err)
	}
	// started detached, it has no stderr: without log_file, the last run's
	// log is kept in builds_dir, where berth check reads it
	w := a.stderr
	if a.settings.LogFile == "" {
		f, err := os.OpenFile(sparesLog(a.settings), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return failure.Systemf("open the spares log in builds_dir: %w", err)
		}
		defer f.Close()
		w = f
	}
	log, err := a.loggerTo(w)
	if err != nil {
		return err
	}
	eng, _, err := a.engine()
	if err != nil {
		log.WithError(err).Warn("helper spare network namespaces")
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	s := &executor.Spares{Engine: eng, Settings: a.settings, Log: log, Version: version, Now: time.Now}
	if err := s.Fill(ctx, afterJob); err != nil {
		log.WithError(err).Warn("helper spare network namespaces")
		return err
	}
	return nil
}

// sparesLog is where `berth spares` logs its last run when no log_file is
// set.
func sparesLog(s *settings.Settings) string { return filepath.Join(s.BuildsDir, ".berth-spares.log") }

// sparesTrouble is what went wrong in the last `berth spares` run, as its
// log in builds_dir says; "" when nothing did or nothing is known.
func sparesTrouble(s *settings.Settings) string {
	if s.Job.HelperSpares == 0 || s.LogFile != "" {
		return ""
	}
	b, err := os.ReadFile(sparesLog(s))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=warning") || strings.Contains(l, "level=error") {
			return fmt.Sprintf("the last berth spares run (%s) failed, so native helpers make their own network namespace (slower): %s", sparesLog(s), l)
		}
	}
	return ""
}
