package stages

import (
	"context"
	"io"
	"time"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/driver"
)

// Environments are berth.toml's environments, each reached through its
// driver: what the deploy stage, the rollback job and the operator's
// `berth rollback` go through, so that every one takes the lock and checks
// the owner the same way.
type Environments struct {
	Settings *settings.Settings
	// Open opens an environment's driver.
	Open func(env string) (driver.Driver, error)
	Out  io.Writer
}

// DeployOptions say how long a deploy may hold the lock.
type DeployOptions struct {
	Timeout time.Duration // the job's timeout: past it, its lock is stale
}

// Deploy takes the environment's lock, checks that the release's project
// owns it and that the release is not older than what serves, and deploys.
func (e *Environments) Deploy(ctx context.Context, rel driver.Release, o DeployOptions) error {
	env, ok := e.Settings.Environments[rel.Env]
	if !ok {
		return failure.Buildf("no environment %q in berth.toml", rel.Env)
	}
	d, err := e.Open(rel.Env)
	if err != nil {
		return err
	}
	unlock, err := d.Lock(ctx, driver.Holder{Job: rel.Job, Pipeline: rel.Pipeline, By: rel.By,
		Deadline: time.Now().Add(o.Timeout)}.ThisProcess(), env.LockTimeout.D())
	if err != nil {
		return err
	}
	defer unlock()
	if err := CheckOwner(ctx, d, rel.Env, env, rel.Project); err != nil {
		return err
	}
	if err := noGoingBack(ctx, d, rel); err != nil {
		return err
	}
	joblog.Step(e.Out, "deploy %s to %s (%s)", rel.Image, rel.Env, env.Driver)
	return d.Deploy(ctx, rel)
}

// noGoingBack refuses a deploy from a pipeline older than the one whose
// release serves, when the same flow sent both: a slow old pipeline must
// not overwrite a newer deploy. A rollback, or a rollback --to, is how to
// go back on purpose.
func noGoingBack(ctx context.Context, d driver.Driver, rel driver.Release) error {
	recs, err := d.History(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.Result != driver.ResultServing {
			continue
		}
		if r.Flow == rel.Flow && rel.Flow != "" && r.Pipeline > rel.Pipeline {
			return failure.Buildf("%s serves %s from pipeline %d, newer than this pipeline %d (both %s flow): an older pipeline does not overwrite a newer deploy; retry the newer pipeline's deploy, or roll back on purpose (BERTH_ACTION=rollback, berth rollback %s --to %s)",
				rel.Env, orDash(r.Tag), r.Pipeline, rel.Pipeline, rel.Flow, rel.Env, rel.Tag)
		}
		break
	}
	return nil
}

// RollbackOptions say what a rollback is for and who asks.
type RollbackOptions struct {
	Env string
	To  string // a tag or digest; "" is the previous version
	By  string
	// Project is the job's project, checked against the environment's
	// owner; "" for the operator's own `berth rollback`.
	Project       string
	Job, Pipeline int64
	Timeout       time.Duration // how long the lock is held at most
}

// Rollback takes the lock and rolls an environment back.
func (e *Environments) Rollback(ctx context.Context, o RollbackOptions) (driver.Record, error) {
	env, ok := e.Settings.Environments[o.Env]
	if !ok {
		return driver.Record{}, failure.Buildf("no environment %q in berth.toml", o.Env)
	}
	d, err := e.Open(o.Env)
	if err != nil {
		return driver.Record{}, err
	}
	unlock, err := d.Lock(ctx, driver.Holder{Job: o.Job, Pipeline: o.Pipeline, By: o.By, Deadline: time.Now().Add(o.Timeout)}.ThisProcess(), env.LockTimeout.D())
	if err != nil {
		return driver.Record{}, err
	}
	defer unlock()
	if o.Project != "" {
		if err := CheckOwner(ctx, d, o.Env, env, o.Project); err != nil {
			return driver.Record{}, err
		}
	}
	return d.Rollback(ctx, o.To, o.By)
}
