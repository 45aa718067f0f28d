package compose

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
)

// Compose's own labels, which `docker compose ps` reads too.
const (
	labelProject = "com.docker.compose.project"
	labelService = "com.docker.compose.service"
)

// Engine is what the driver needs from the target engine itself.
type Engine interface {
	target.LockEngine
	target.Puller
	ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
}

// Driver deploys to a compose project on a Docker host.
type Driver struct {
	Env        string
	Spec       settings.ComposeSpec
	DockerHost string
	SSHOptions []string
	Engine     Engine
	Apply      Applier
	Creds      *target.Credentials
	Out        io.Writer
	// Dir is where relative compose files are: the checked-out sources in
	// a job, the current directory for operator commands.
	Dir string
	// Reserved are the container names of berth's other environments,
	// which the compose file must not take.
	Reserved []string
	// Pause is called before each step ("deploy:up"): the test rig's fault
	// injection. nil does nothing.
	Pause   func(ctx context.Context, step string)
	records *target.LedgerStore
}

var _ driver.Driver = (*Driver)(nil)

// Lock is the same lock as the container driver's, on the target engine.
func (d *Driver) Lock(ctx context.Context, h driver.Holder, timeout time.Duration) (func(), error) {
	return target.EngineLock(ctx, d.Engine, d.Out, d.Env, d.key(), h, timeout)
}

// store is the environment's ledger, read once.
func (d *Driver) store() *target.LedgerStore {
	if d.records == nil {
		d.records = &target.LedgerStore{Engine: d.Engine, Env: d.Env, Key: d.key()}
	}
	return d.records
}

// key names the environment's lock and ledger after its compose project.
func (d *Driver) key() string { return "compose-" + d.Spec.Project }

// Owner is the project that owns the environment, from its ledger.
func (d *Driver) Owner(ctx context.Context, claim string) (string, error) {
	return d.store().Owner(ctx, claim)
}

// Deploy points the services at the release by digest and brings the
// project up; when it does not come up, or the job is cancelled, the
// previous digest goes back.
func (d *Driver) Deploy(ctx context.Context, r driver.Release) error {
	if err := target.PullOnTarget(ctx, d.Engine, d.Creds, d.Out, r.Image); err != nil {
		return err
	}
	led, err := d.ledger(ctx)
	if err != nil {
		return err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return err
	}
	return d.switchTo(ctx, led, driver.EntryOf(r, "", driver.ResultServing), driver.ResultReplaced, r.Tag, "deploy")
}

// undoTimeout bounds putting the previous digest back.
func (d *Driver) undoTimeout() time.Duration { return d.Spec.WaitTimeout.D() + time.Minute }

// switchTo brings the project up at next, which replaces the serving
// entry (recorded with result); on failure, or when the job is cancelled,
// the serving entry goes back, on a bounded context of its own. The
// journal in the ledger covers a berth killed meanwhile.
func (d *Driver) switchTo(ctx context.Context, led target.Ledger, next driver.Entry, result, what, kind string) error {
	cur, hadCur := led.Serving()
	t := time.Now()
	if d.Pause != nil {
		d.Pause(ctx, kind+":journal")
	}
	led.Switch = &target.Switch{Kind: kind, Job: next.Job, Since: time.Now().UTC(), Entry: next, From: cur.Image}
	if err := d.store().Write(ctx, led); err != nil {
		return err
	}
	if d.Pause != nil {
		d.Pause(ctx, kind+":up")
	}
	joblog.Step(d.Out, "%s: compose up, project %s, on %s", d.Env, d.Spec.Project, orImage(next.Tag, next.Image))
	res, err := Result{}, ctx.Err()
	if err == nil {
		res, err = d.Apply.Apply(ctx, d.request(next))
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err == nil && res.Error == "" {
		joblog.Step(d.Out, "%s: %s up and running in %s", d.Env, strings.Join(res.Services, ", "), time.Since(t).Round(time.Millisecond))
		if d.Pause != nil {
			d.Pause(ctx, kind+":record")
		}
		led.Switch = nil
		led.Push(next, result)
		d.trim(&led)
		return d.store().Write(ctx, led)
	}
	var why string
	cancelled := ctx.Err() != nil
	switch {
	case cancelled:
		why = fmt.Sprintf("the %s was cancelled", kind)
		next.Result = driver.ResultInterrupted
	case err != nil:
		why = err.Error()
		next.Result = driver.ResultInterrupted
	case res.Class == driver.ClassInvalid:
		led.Switch = nil
		if werr := d.store().Write(ctx, led); werr != nil {
			joblog.Warn(d.Out, "%v", werr)
		}
		return failure.Buildf("%s: %s\nNothing was changed: %s still runs what it ran.", d.Env, res.Error, d.Spec.Project)
	default:
		why = res.Error
		if res.Logs != "" {
			why += fmt.Sprintf("\nLast log lines of %s:\n%s", res.Failing, strings.TrimRight(res.Logs, "\n"))
		}
		next.Result = driver.ResultFailed
	}
	led.Push(next, "")
	d.trim(&led)
	if !hadCur {
		led.Switch = nil
		if werr := d.store().Write(ctx, led); werr != nil {
			joblog.Warn(d.Out, "%v", werr)
		}
		if err != nil && !cancelled {
			return wrap(err, "%s: %s (%s): %s\nnothing ran before, so nothing serves now.", d.Env, d.Spec.Project, what, why)
		}
		return failure.Buildf("%s: %s (%s) did not come up: %s\nnothing ran before, so nothing serves now.", d.Env, d.Spec.Project, what, why)
	}
	joblog.Step(d.Out, "%s: %s did not come up; putting %s back", d.Env, what, cur.Image)
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.undoTimeout())
	defer cancel()
	back, berr := d.Apply.Apply(uctx, d.request(cur))
	if berr == nil {
		berr = back.Err()
	}
	if berr != nil {
		if werr := d.store().Write(uctx, led); werr != nil { // the journal stays for Recover
			joblog.Warn(d.Out, "%v", werr)
		}
		return failure.Systemf("%s: %s did not come up (%s), and putting the previous digest back failed too: %v: the next deploy, berth rollback %s or this job's cleanup finishes it", d.Env, what, why, berr, d.Env)
	}
	led.Switch = nil
	if werr := d.store().Write(uctx, led); werr != nil {
		joblog.Warn(d.Out, "%v", werr)
	}
	if err != nil && !cancelled {
		return wrap(err, "%s: %s: %s\nThe previous digest (%s) serves again.", d.Env, what, why, cur.Image)
	}
	return failure.Buildf("%s: %s did not come up: %s\nThe previous digest (%s) serves again.", d.Env, what, why, cur.Image)
}

// Recover finishes a switch that job, killed, left half done (the previous
// digest goes back up) and releases its lock.
func (d *Driver) Recover(ctx context.Context, job int64) error {
	return target.RecoverLock(ctx, d.Engine, d.key(), job, func(ctx context.Context) error {
		led, err := d.ledger(ctx)
		if err != nil {
			return err
		}
		return d.recoverSwitch(ctx, &led)
	})
}

func (d *Driver) recoverSwitch(ctx context.Context, led *target.Ledger) error {
	sw := led.Switch
	if sw == nil {
		return nil
	}
	joblog.Step(d.Out, "%s: a %s of job %d, begun %s, did not finish: putting the previous digest back first", d.Env, sw.Kind, sw.Job, sw.Since.Format(time.RFC3339))
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.undoTimeout())
	defer cancel()
	if cur, ok := led.Serving(); ok {
		res, err := d.Apply.Apply(uctx, d.request(cur))
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			return failure.Systemf("%s: put the previous digest (%s) back: %v", d.Env, cur.Image, err)
		}
	}
	e := sw.Entry
	e.Result = driver.ResultInterrupted
	led.Push(e, "")
	led.Switch = nil
	return d.store().Write(uctx, *led)
}

// wrap formats an error keeping err's class.
func wrap(err error, format string, args ...any) error {
	if failure.ClassOf(err) == failure.BuildFailure {
		return failure.Buildf(format, args...)
	}
	return failure.Systemf(format, args...)
}

// trim keeps the serving entry and Keep earlier ones.
func (d *Driver) trim(l *target.Ledger) {
	if len(l.Entries) > d.Spec.Keep+1 {
		l.Entries = l.Entries[:d.Spec.Keep+1]
	}
}

func (d *Driver) request(e driver.Entry) Request {
	return Request{
		DockerHost: d.DockerHost, SSHOptions: d.SSHOptions, Env: d.Env, Project: d.Spec.Project, WorkingDir: d.Dir,
		Files: d.Spec.Files, EnvFiles: d.Spec.EnvFiles, Profiles: d.Spec.Profiles, WaitTimeout: d.Spec.WaitTimeout.D(),
		Image: e.Image, Services: d.Spec.Services, Labels: driver.Labels(d.Env, e), Allow: d.Spec.Allow, Reserved: d.Reserved,
	}
}

// ledger reads the environment's ledger; without one yet, it is made once
// from the labels an earlier berth put on the project's containers.
func (d *Driver) ledger(ctx context.Context) (target.Ledger, error) {
	l, ok, err := d.store().Read(ctx)
	if err != nil || ok {
		return l, err
	}
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", labelProject+"="+d.Spec.Project), filters.Arg("label", driver.LabelEnv+"="+d.Env))})
	if err != nil {
		return l, failure.Systemf("list the containers of project %s: %w", d.Spec.Project, err)
	}
	if len(list) == 0 {
		return l, nil
	}
	sort.Slice(list, func(i, k int) bool { return list[i].Created > list[k].Created })
	return ledgerOfLabels(d.Env, list[0].Labels, list[0].Image), nil
}

// Rollback brings back the newest earlier deployment that did not fail, or
// the one whose tag or digest is to.
func (d *Driver) Rollback(ctx context.Context, to, by string) (driver.Record, error) {
	led, err := d.ledger(ctx)
	if err != nil {
		return driver.Record{}, err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return driver.Record{}, err
	}
	cur, ok := led.Serving()
	if !ok {
		return driver.Record{}, failure.Buildf("%s: project %s runs nothing: deploy a version first", d.Env, d.Spec.Project)
	}
	i, ok := driver.ChooseEntry(led.Entries, cur.Image, to)
	if !ok {
		return driver.Record{}, driver.NoRollback(d.Env, to, "an earlier version")
	}
	chosen := led.Entries[i]
	if err := target.PullOnTarget(ctx, d.Engine, d.Creds, d.Out, chosen.Image); err != nil {
		return driver.Record{}, err
	}
	back := chosen
	back.Result, back.Time = driver.ResultServing, time.Now().UTC()
	if err := d.switchTo(ctx, led, back, driver.RolledBackBy(by), "rollback to "+orImage(back.Tag, back.Image), "rollback"); err != nil {
		return driver.Record{}, err
	}
	return back.Record(), nil
}

// History is the ledger: the current deployment first, then the others,
// newest first.
func (d *Driver) History(ctx context.Context) ([]driver.Record, error) {
	led, err := d.ledger(ctx)
	if err != nil {
		return nil, err
	}
	var recs []driver.Record
	for _, e := range led.Entries {
		r := e.Record()
		r.ID = e.Image
		recs = append(recs, r)
	}
	sort.SliceStable(recs, func(i, k int) bool {
		return recs[i].Result == driver.ResultServing && recs[k].Result != driver.ResultServing
	})
	return recs, nil
}

func orImage(tag, image string) string {
	if tag != "" {
		return tag
	}
	return image
}
