package containers

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
)

// The container driver's switches, deploy and rollback, as steps with
// their undos (steps.go), journalled in the ledger before the first step
// that touches what serves, so that a berth killed at any step is put right
// by the next deploy, rollback or its job's cleanup (Recover).

// undoTimeout bounds putting a switch back: stopping the new version,
// starting the old one and waiting for its health.
func (d *Driver) undoTimeout() time.Duration {
	return d.Spec.HealthTimeout.D() + 2*d.Spec.StopTimeout.D() + time.Minute
}

func (d *Driver) steps(kind string) driver.Steps {
	return driver.Steps{What: kind + " of " + d.Env, UndoTimeout: d.undoTimeout(), Out: d.Out,
		Pause: func(ctx context.Context, step string) {
			if d.Pause != nil {
				d.Pause(ctx, kind+":"+step)
			}
		}}
}

// Rollback stops the serving container and starts a kept one of the
// ledger: the newest one that did not fail, or the one whose tag or digest
// is to. Cancelled or failed, the current version serves again.
func (d *Driver) Rollback(ctx context.Context, to, by string) (driver.Record, error) {
	if d.proxied() {
		return d.proxyRollback(ctx, to, by)
	}
	led, err := d.ledger(ctx)
	if err != nil {
		return driver.Record{}, err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return driver.Record{}, err
	}
	kept, entries, err := d.kept(ctx, led)
	if err != nil {
		return driver.Record{}, err
	}
	serving, _ := led.Serving()
	i, ok := driver.ChooseEntry(entries, serving.Image, to)
	if !ok {
		what := "a previous version"
		if to != "" {
			what = to
		}
		return driver.Record{}, failure.Buildf("no kept container of %s holds %s (berth history %s lists them): deploy it instead", d.Env, what, d.Env)
	}
	chosen, entry := &kept[i], entries[i]
	name := d.Spec.Name
	cur, hasCur, err := d.inspect(ctx, name)
	if err != nil {
		return driver.Record{}, err
	}
	if hasCur {
		if _, known := led.Find(cur.ID); !known {
			led.Push(adoptedEntry(cur), driver.ResultReplaced)
		}
	}
	sw := &target.Switch{Kind: "rollback", Since: time.Now().UTC(), To: chosen.ID, ToName: containerName(*chosen), Entry: entry}
	if hasCur {
		sw.From = cur.ID
	}
	steps := []driver.Step{{Name: "journal", Do: func(ctx context.Context) error {
		led.Switch = sw
		return d.store().Write(ctx, led)
	}}}
	if hasCur {
		steps = append(steps,
			driver.Step{Name: "stop-current",
				Do:   func(ctx context.Context) error { return d.stop(ctx, cur.ID) },
				Undo: func(ctx context.Context) error { return d.startHealthy(ctx, cur.ID, "the current "+name) }},
			driver.Step{Name: "rename-current",
				Do: func(ctx context.Context) error {
					if err := d.Engine.ContainerRename(ctx, cur.ID, keptName(name, cur.ID, "rb-"+sanitize(by))); err != nil {
						return failure.Systemf("rename %s: %w", name, err)
					}
					return nil
				},
				Undo: func(ctx context.Context) error { return d.renameTo(ctx, cur.ID, name) }})
	}
	if container.NetworkMode(chosen.HostConfig.NetworkMode).IsContainer() {
		steps = append(steps, driver.Step{Name: "join-anchor", Do: func(ctx context.Context) error {
			oldID := chosen.ID
			if err := d.joinAnchor(ctx, chosen); err != nil {
				return err
			}
			if e, ok := led.Find(oldID); ok {
				e.ID = chosen.ID // made again in the current anchor
			}
			sw.To = chosen.ID
			return nil
		}})
	}
	steps = append(steps,
		driver.Step{Name: "rename-target",
			Do:   func(ctx context.Context) error { return d.Engine.ContainerRename(ctx, chosen.ID, name) },
			Undo: func(ctx context.Context) error { return d.renameTo(ctx, chosen.ID, sw.ToName) }},
		driver.Step{Name: "start-target",
			Do: func(ctx context.Context) error {
				if err := d.Engine.ContainerStart(ctx, chosen.ID, container.StartOptions{}); err != nil {
					return err
				}
				return d.waitHealthy(ctx, chosen.ID, d.Spec.HealthTimeout.D())
			},
			Undo: func(ctx context.Context) error { return d.stop(ctx, chosen.ID) }})

	if err := d.steps("rollback").Run(ctx, steps); err != nil {
		var se *driver.StepError
		if !errors.As(err, &se) {
			return driver.Record{}, err
		}
		if se.UndoErr == nil {
			led.Switch = nil
			if werr := d.store().Write(ctx, led); werr != nil {
				joblog.Warn(d.Out, "%v", werr)
			}
			return driver.Record{}, failure.Buildf("roll %s back to %s: %v; the current version serves again", d.Env, sw.ToName, se.Err)
		}
		return driver.Record{}, failure.Systemf("roll %s back to %s: %v; putting the current version back failed too (%v): the next deploy, berth rollback %s or this job's cleanup finishes it", d.Env, sw.ToName, se.Err, se.UndoErr, d.Env)
	}
	if d.Pause != nil {
		d.Pause(ctx, "rollback:record")
	}
	d.markRolledBack(&led, chosen.ID, by)
	led.Switch = nil
	if err := d.store().Write(ctx, led); err != nil {
		return driver.Record{}, err
	}
	entry.ID, entry.Result = name, driver.ResultServing
	return entry.Record(), nil
}

// markRolledBack records that id serves again and what served before was
// rolled back by by.
func (d *Driver) markRolledBack(led *target.Ledger, id, by string) {
	for i := range led.Entries {
		switch e := &led.Entries[i]; {
		case e.ID == id:
			e.Result = driver.ResultServing
		case e.Result == driver.ResultServing:
			e.Result = driver.RolledBackBy(by)
		}
	}
}

// Recover finishes a switch that job, killed, left half done, and releases
// its lock: the journal in the ledger says what served and what was being
// switched to. A new version that took over and is healthy stays; else what
// served before serves again.
func (d *Driver) Recover(ctx context.Context, job int64) error {
	return target.RecoverLock(ctx, d.Engine, d.Spec.Name, job, func(ctx context.Context) error {
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
		return d.removeLeftovers(ctx, led)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.undoTimeout())
	defer cancel()
	name := d.Spec.Name
	joblog.Step(d.Out, "%s: a %s of job %d, begun %s, did not finish: putting it right first", d.Env, strings.TrimPrefix(sw.Kind, "proxy-"), sw.Job, sw.Since.Format(time.RFC3339))
	if strings.HasPrefix(sw.Kind, "proxy-") {
		if err := d.recoverProxy(ctx, led); err != nil {
			return err
		}
		return d.removeLeftovers(ctx, led)
	}
	var to container.InspectResponse
	var hasTo bool
	if sw.To != "" {
		var err error
		if to, hasTo, err = d.inspect(ctx, sw.To); err != nil {
			return err
		}
	}
	if sw.To != "" && hasTo && to.Name == "/"+name && to.State.Running && d.waitHealthy(ctx, sw.To, 5*time.Second) == nil {
		// it had taken over and is healthy: it stays
		if sw.From != "" {
			_ = d.stop(ctx, sw.From)
			_ = d.renameTo(ctx, sw.From, keptName(name, sw.From, ""))
		}
		if sw.OldAnchor != "" {
			_ = d.remove(ctx, sw.OldAnchor)
		}
		if sw.Kind == "deploy" {
			led.Push(entryWithID(sw.Entry, sw.To, driver.ResultServing), driver.ResultReplaced)
		} else {
			d.markRolledBack(led, sw.To, "job "+fmt.Sprint(sw.Job))
		}
		joblog.Step(d.Out, "%s: %s had taken over and is healthy: it serves", d.Env, orName(sw.Entry.Tag, sw.To))
	} else {
		// what served before serves again
		if hasTo && sw.To != "" {
			_ = d.stop(ctx, sw.To)
			toName := sw.ToName
			if sw.Kind == "deploy" {
				toName = keptName(name, sw.To, "interrupted")
				led.Push(entryWithID(sw.Entry, sw.To, driver.ResultInterrupted), "")
			}
			if err := d.renameTo(ctx, sw.To, toName); err != nil {
				return failure.Systemf("%s: put %s aside: %w", d.Env, toName, err)
			}
		}
		if sw.NewAnchor != "" {
			_ = d.remove(ctx, sw.NewAnchor)
		}
		if sw.OldAnchor != "" {
			if err := d.renameTo(ctx, sw.OldAnchor, AnchorName(name)); err != nil {
				return failure.Systemf("%s: put the anchor back: %w", d.Env, err)
			}
			if err := d.startOnly(ctx, sw.OldAnchor); err != nil {
				return failure.Systemf("%s: start the anchor again: %w", d.Env, err)
			}
		}
		if sw.From != "" {
			if err := d.renameTo(ctx, sw.From, name); err != nil {
				return failure.Systemf("%s: put the previous %s back: %w", d.Env, name, err)
			}
			if err := d.startHealthy(ctx, sw.From, "the previous "+name); err != nil {
				return err
			}
		}
		joblog.Step(d.Out, "%s: what served before the %s serves again", d.Env, sw.Kind)
	}
	led.Switch = nil
	if err := d.store().Write(ctx, *led); err != nil {
		return err
	}
	return d.removeLeftovers(ctx, led)
}

// removeLeftovers removes what a switch killed before its journal made:
// the containers and anchors it had created under their temporary names
// ("NAME-new-JOB", "NAME-net-new-JOB"). The caller holds the lock, so no
// switch of another job makes them meanwhile.
func (d *Driver) removeLeftovers(ctx context.Context, led *target.Ledger) error {
	name := d.Spec.Name
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+name+"-"))})
	if err != nil {
		return failure.Systemf("list containers of %s: %w", d.Env, err)
	}
	tmp := regexp.MustCompile("^" + regexp.QuoteMeta(name) + "((-net)?-new-[0-9]+(-[0-9]+)?|-release-[0-9]+)$")
	for _, c := range list {
		if _, known := led.Find(c.ID); !known && tmp.MatchString(containerName(c)) {
			if err := d.remove(ctx, c.ID); err != nil {
				return failure.Systemf("remove %s, left by a killed deploy: %w", containerName(c), err)
			}
		}
	}
	return nil
}

func entryWithID(e driver.Entry, id, result string) driver.Entry {
	e.ID, e.Result = id, result
	return e
}

// remove removes a container, if there is one.
func (d *Driver) remove(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	if err := d.Engine.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// renameTo names a container, unless it is gone or named so already.
func (d *Driver) renameTo(ctx context.Context, id, name string) error {
	c, ok, err := d.inspect(ctx, id)
	if err != nil || !ok || c.Name == "/"+name {
		return err
	}
	return d.Engine.ContainerRename(ctx, id, name)
}

// startOnly starts a container, if it does not run already.
func (d *Driver) startOnly(ctx context.Context, id string) error {
	if err := d.Engine.ContainerStart(ctx, id, container.StartOptions{}); err != nil && !errdefs.IsNotModified(err) {
		return err
	}
	return nil
}

// startHealthy starts a container that a switch stopped and waits for its
// health: the job ends only when it serves again.
func (d *Driver) startHealthy(ctx context.Context, id, what string) error {
	if err := d.startOnly(ctx, id); err != nil {
		return fmt.Errorf("start %s again: %w", what, err)
	}
	if err := d.waitHealthy(ctx, id, d.Spec.HealthTimeout.D()); err != nil {
		joblog.Warn(d.Out, "%s is not healthy either: %v", what, err)
	}
	return nil
}

// wrapClass formats an error keeping err's class.
func wrapClass(err error, format string, args ...any) error {
	if failure.ClassOf(err) == failure.BuildFailure {
		return failure.Buildf(format, args...)
	}
	return failure.Systemf(format, args...)
}
