package stages

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/failure"
)

// The container driver's switches, deploy and rollback, as steps with
// their undos (steps.go), journalled in the ledger before the first step
// that touches what serves, so that a berth killed at any step is put right
// by the next deploy, rollback or its job's cleanup (Recover).

// undoTimeout bounds putting a switch back: stopping the new version,
// starting the old one and waiting for its health.
func (d *ContainerDriver) undoTimeout() time.Duration {
	return d.Spec.HealthTimeout.D() + 2*d.Spec.StopTimeout.D() + time.Minute
}

func (d *ContainerDriver) steps(kind string) Steps {
	return Steps{What: kind + " of " + d.Env, UndoTimeout: d.undoTimeout(), Out: d.Out,
		Pause: func(ctx context.Context, step string) {
			if d.Pause != nil {
				d.Pause(ctx, kind+":"+step)
			}
		}}
}

// Deploy: pull by digest, create the new container while the old one still
// serves, stop the old one, start the new one, wait for health. On failure,
// or when the job is cancelled, the new one is stopped (kept as failed when
// it got as far as starting) and every step is put back: the old one serves
// again.
func (d *ContainerDriver) Deploy(ctx context.Context, r Release) error {
	if err := PullOnTarget(ctx, d.Engine, d.Creds, d.Out, r.Image); err != nil {
		return err
	}
	led, err := d.ledger(ctx)
	if err != nil {
		return err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return err
	}
	name := d.Spec.Name
	old, hasOld, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	if hasOld {
		if _, known := led.Find(old.ID); !known { // started by hand, or the ledger was lost
			led.Push(adoptedEntry(old), ResultReplaced)
		}
	}
	anchorRef, why, err := d.anchorImage(ctx)
	if err != nil {
		return err
	}
	if why != "" {
		fmt.Fprintf(d.Out, "berth: %s publishes its ports itself (%s): a switch costs about a second of outage\n", name, why)
	}
	rc, err := d.render(r, old, hasOld, anchorRef != "")
	if err != nil {
		return err
	}
	anc, hasAnc, err := d.inspect(ctx, AnchorName(name))
	if err != nil {
		return err
	}
	// The anchor is made again when the ports or networks changed, and
	// retired when the ports move onto the container. A new one is created
	// beside the old, and started once the old one let go of the ports.
	moving := hasAnc && (anchorRef == "" || anc.Config.Labels[labelAnchorLayout] != rc.layout)
	sw := &Switch{Kind: "deploy", Job: r.Job, Since: time.Now().UTC(), Entry: EntryOf(r, "", ResultServing),
		ToName: fmt.Sprintf("%s-new-%d", name, r.Job)}
	if hasOld {
		sw.From = old.ID
	}
	if moving {
		sw.OldAnchor = anc.ID
	}
	retired := AnchorName(name) + "-old"
	var healthErr error
	kept := false // the new one got as far as starting: kept, stopped, for its logs
	var steps []Step
	if anchorRef != "" && (!hasAnc || moving) {
		steps = append(steps, Step{Name: "create-anchor",
			Do: func(ctx context.Context) (err error) {
				sw.NewAnchor, err = d.createAnchor(ctx, anchorRef, rc, r.Job)
				return err
			},
			Undo: func(ctx context.Context) error { return d.remove(ctx, sw.NewAnchor) }})
	}
	steps = append(steps,
		Step{Name: "create",
			Do: func(ctx context.Context) error {
				_ = d.Engine.ContainerRemove(ctx, sw.ToName, container.RemoveOptions{Force: true}) // a crashed attempt's leftover
				if anchorRef != "" {
					anchorID := sw.NewAnchor
					if anchorID == "" {
						anchorID = anc.ID
					}
					// by id: the engine resolves a name once, at create
					rc.host.NetworkMode = container.NetworkMode("container:" + anchorID)
				}
				made, err := d.Engine.ContainerCreate(ctx, rc.cfg, rc.host, rc.net, nil, sw.ToName)
				if err != nil {
					return failure.Buildf("create the new %s container: %v: check [environments.%s.container] in berth.toml", name, err, d.Env)
				}
				sw.To = made.ID
				return nil
			},
			Undo: func(ctx context.Context) error {
				if kept {
					return nil
				}
				return d.remove(ctx, sw.To)
			}},
		Step{Name: "journal", Do: func(ctx context.Context) error {
			led.Switch = sw
			return d.store().Write(ctx, led)
		}})
	if hasOld && old.State.Running {
		steps = append(steps, Step{Name: "stop-old",
			Do:   func(ctx context.Context) error { return d.stop(ctx, old.ID) },
			Undo: func(ctx context.Context) error { return d.startHealthy(ctx, old.ID, "the previous "+name) }})
	}
	if hasOld {
		steps = append(steps, Step{Name: "rename-old",
			Do: func(ctx context.Context) error {
				if err := d.Engine.ContainerRename(ctx, old.ID, keptName(name, old.ID, "")); err != nil {
					return failure.Systemf("rename the old %s container: %w", name, err)
				}
				return nil
			},
			Undo: func(ctx context.Context) error { return d.renameTo(ctx, old.ID, name) }})
	}
	if moving {
		steps = append(steps, Step{Name: "retire-anchor",
			Do: func(ctx context.Context) error {
				_ = d.Engine.ContainerRemove(ctx, retired, container.RemoveOptions{Force: true})
				if err := d.stop(ctx, anc.ID); err != nil {
					return err
				}
				if err := d.Engine.ContainerRename(ctx, anc.ID, retired); err != nil {
					return failure.Systemf("rename the old anchor %s: %w", AnchorName(name), err)
				}
				return nil
			},
			Undo: func(ctx context.Context) error {
				if err := d.renameTo(ctx, anc.ID, AnchorName(name)); err != nil {
					return err
				}
				return d.startOnly(ctx, anc.ID)
			}})
	}
	steps = append(steps,
		Step{Name: "start-anchor",
			Do: func(ctx context.Context) error { return d.startAnchor(ctx, sw.NewAnchor, anc, hasAnc && !moving) },
			// the new anchor lets go of the ports before the old one takes them again
			Undo: func(ctx context.Context) error { return d.remove(ctx, sw.NewAnchor) }},
		Step{Name: "rename-new",
			Do: func(ctx context.Context) error {
				if err := d.Engine.ContainerRename(ctx, sw.To, name); err != nil {
					return failure.Systemf("rename the new container to %s: %w", name, err)
				}
				return nil
			},
			Undo: func(ctx context.Context) error { return d.renameTo(ctx, sw.To, keptName(name, sw.To, "failed")) }},
		Step{Name: "start-new",
			Do: func(ctx context.Context) error {
				kept = true
				t := time.Now()
				healthErr = d.Engine.ContainerStart(ctx, sw.To, container.StartOptions{})
				if healthErr == nil {
					healthErr = d.waitHealthy(ctx, sw.To, d.Spec.HealthTimeout.D())
				}
				if healthErr != nil {
					return healthErr
				}
				fmt.Fprintf(d.Out, "berth: %s serves %s (healthy after %s)\n", name, r.Image, time.Since(t).Round(time.Millisecond))
				return nil
			},
			Undo: func(ctx context.Context) error { return d.stop(ctx, sw.To) }},
	)

	err = d.steps("deploy").Run(ctx, steps)
	if err == nil {
		if d.Pause != nil {
			d.Pause(ctx, "deploy:record")
		}
		// the new version serves: the records follow, cancelled or not
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if moving {
			_ = d.Engine.ContainerRemove(cctx, retired, container.RemoveOptions{Force: true})
		}
		led.Switch = nil
		led.Push(EntryOf(r, sw.To, ResultServing), ResultReplaced)
		return d.prune(cctx, led)
	}
	var se *StepError
	if !errors.As(err, &se) {
		return err
	}
	back := "nothing ran before, so nothing serves now"
	if hasOld {
		back = "the previous container serves again"
	}
	if kept && sw.To != "" {
		led.Push(EntryOf(r, sw.To, ResultFailed), "")
	}
	if se.UndoErr == nil {
		led.Switch = nil
	}
	if werr := d.store().Write(ctx, led); werr != nil {
		fmt.Fprintf(d.Out, "berth: warning: %v\n", werr)
	}
	switch {
	case se.UndoErr != nil:
		return failure.Systemf("%v; putting the previous version back failed too (%v): the next deploy, berth rollback %s or this job's cleanup finishes it", se.Err, se.UndoErr, d.Env)
	case se.Cancelled:
		return failure.Buildf("%v: %s", se.Err, back)
	case se.Step == "start-new" && healthErr != nil:
		logs := d.lastLogs(ctx, sw.To, 10)
		return failure.Buildf("the new %s (%s) did not become healthy: %v; %s.%s", name, r.Tag, healthErr, back, logs)
	default:
		return wrapClass(se.Err, "%v; "+back, se.Err)
	}
}

// Rollback stops the serving container and starts a kept one of the
// ledger: the newest one that did not fail, or the one whose tag or digest
// is to. Cancelled or failed, the current version serves again.
func (d *ContainerDriver) Rollback(ctx context.Context, to, by string) (Record, error) {
	led, err := d.ledger(ctx)
	if err != nil {
		return Record{}, err
	}
	if err := d.recoverSwitch(ctx, &led); err != nil {
		return Record{}, err
	}
	kept, entries, err := d.kept(ctx, led)
	if err != nil {
		return Record{}, err
	}
	var target *container.Summary
	var entry Entry
	for i, e := range entries {
		if e.Result == ResultFailed || e.Result == ResultInterrupted {
			continue
		}
		if to == "" || e.Tag == to || e.Digest == to || hasDigestSuffix(e.Image, to) {
			target, entry = &kept[i], e
			break
		}
	}
	if target == nil {
		what := "a previous version"
		if to != "" {
			what = to
		}
		return Record{}, failure.Buildf("no kept container of %s holds %s (berth history %s lists them): deploy it instead", d.Env, what, d.Env)
	}
	name := d.Spec.Name
	cur, hasCur, err := d.inspect(ctx, name)
	if err != nil {
		return Record{}, err
	}
	if hasCur {
		if _, known := led.Find(cur.ID); !known {
			led.Push(adoptedEntry(cur), ResultReplaced)
		}
	}
	sw := &Switch{Kind: "rollback", Since: time.Now().UTC(), To: target.ID, ToName: containerName(*target), Entry: entry}
	if hasCur {
		sw.From = cur.ID
	}
	steps := []Step{{Name: "journal", Do: func(ctx context.Context) error {
		led.Switch = sw
		return d.store().Write(ctx, led)
	}}}
	if hasCur {
		steps = append(steps,
			Step{Name: "stop-current",
				Do:   func(ctx context.Context) error { return d.stop(ctx, cur.ID) },
				Undo: func(ctx context.Context) error { return d.startHealthy(ctx, cur.ID, "the current "+name) }},
			Step{Name: "rename-current",
				Do: func(ctx context.Context) error {
					if err := d.Engine.ContainerRename(ctx, cur.ID, keptName(name, cur.ID, "rb-"+sanitize(by))); err != nil {
						return failure.Systemf("rename %s: %w", name, err)
					}
					return nil
				},
				Undo: func(ctx context.Context) error { return d.renameTo(ctx, cur.ID, name) }})
	}
	if container.NetworkMode(target.HostConfig.NetworkMode).IsContainer() {
		steps = append(steps, Step{Name: "join-anchor", Do: func(ctx context.Context) error {
			oldID := target.ID
			if err := d.joinAnchor(ctx, target); err != nil {
				return err
			}
			if e, ok := led.Find(oldID); ok {
				e.ID = target.ID // made again in the current anchor
			}
			sw.To = target.ID
			return nil
		}})
	}
	steps = append(steps,
		Step{Name: "rename-target",
			Do:   func(ctx context.Context) error { return d.Engine.ContainerRename(ctx, target.ID, name) },
			Undo: func(ctx context.Context) error { return d.renameTo(ctx, target.ID, sw.ToName) }},
		Step{Name: "start-target",
			Do: func(ctx context.Context) error {
				if err := d.Engine.ContainerStart(ctx, target.ID, container.StartOptions{}); err != nil {
					return err
				}
				return d.waitHealthy(ctx, target.ID, d.Spec.HealthTimeout.D())
			},
			Undo: func(ctx context.Context) error { return d.stop(ctx, target.ID) }})

	if err := d.steps("rollback").Run(ctx, steps); err != nil {
		var se *StepError
		if !errors.As(err, &se) {
			return Record{}, err
		}
		if se.UndoErr == nil {
			led.Switch = nil
			if werr := d.store().Write(ctx, led); werr != nil {
				fmt.Fprintf(d.Out, "berth: warning: %v\n", werr)
			}
			return Record{}, failure.Buildf("roll %s back to %s: %v; the current version serves again", d.Env, sw.ToName, se.Err)
		}
		return Record{}, failure.Systemf("roll %s back to %s: %v; putting the current version back failed too (%v): the next deploy, berth rollback %s or this job's cleanup finishes it", d.Env, sw.ToName, se.Err, se.UndoErr, d.Env)
	}
	if d.Pause != nil {
		d.Pause(ctx, "rollback:record")
	}
	d.markRolledBack(&led, target.ID, by)
	led.Switch = nil
	if err := d.store().Write(ctx, led); err != nil {
		return Record{}, err
	}
	entry.ID, entry.Result = name, ResultServing
	return entry.Record(), nil
}

// markRolledBack records that id serves again and what served before was
// rolled back by by.
func (d *ContainerDriver) markRolledBack(led *Ledger, id, by string) {
	for i := range led.Entries {
		switch e := &led.Entries[i]; {
		case e.ID == id:
			e.Result = ResultServing
		case e.Result == ResultServing:
			e.Result = RolledBackBy(by)
		}
	}
}

// Recover finishes a switch that job, killed, left half done, and releases
// its lock: the journal in the ledger says what served and what was being
// switched to. A new version that took over and is healthy stays; else what
// served before serves again.
func (d *ContainerDriver) Recover(ctx context.Context, job int64) error {
	return RecoverLock(ctx, d.Engine, d.Spec.Name, job, func(ctx context.Context) error {
		led, err := d.ledger(ctx)
		if err != nil {
			return err
		}
		return d.recoverSwitch(ctx, &led)
	})
}

func (d *ContainerDriver) recoverSwitch(ctx context.Context, led *Ledger) error {
	sw := led.Switch
	if sw == nil {
		return d.removeLeftovers(ctx, led)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.undoTimeout())
	defer cancel()
	name := d.Spec.Name
	fmt.Fprintf(d.Out, "berth: %s: a %s of job %d, begun %s, did not finish: putting it right first\n", d.Env, sw.Kind, sw.Job, sw.Since.Format(time.RFC3339))
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
			led.Push(entryWithID(sw.Entry, sw.To, ResultServing), ResultReplaced)
		} else {
			d.markRolledBack(led, sw.To, "job "+fmt.Sprint(sw.Job))
		}
		fmt.Fprintf(d.Out, "berth: %s: %s had taken over and is healthy: it serves\n", d.Env, orName(sw.Entry.Tag, sw.To))
	} else {
		// what served before serves again
		if hasTo && sw.To != "" {
			_ = d.stop(ctx, sw.To)
			toName := sw.ToName
			if sw.Kind == "deploy" {
				toName = keptName(name, sw.To, "interrupted")
				led.Push(entryWithID(sw.Entry, sw.To, ResultInterrupted), "")
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
		fmt.Fprintf(d.Out, "berth: %s: what served before the %s serves again\n", d.Env, sw.Kind)
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
func (d *ContainerDriver) removeLeftovers(ctx context.Context, led *Ledger) error {
	name := d.Spec.Name
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+name+"-"))})
	if err != nil {
		return failure.Systemf("list containers of %s: %w", d.Env, err)
	}
	tmp := regexp.MustCompile("^" + regexp.QuoteMeta(name) + "(-net)?-new-[0-9]+$")
	for _, c := range list {
		if _, known := led.Find(c.ID); !known && tmp.MatchString(containerName(c)) {
			if err := d.remove(ctx, c.ID); err != nil {
				return failure.Systemf("remove %s, left by a killed deploy: %w", containerName(c), err)
			}
		}
	}
	return nil
}

func entryWithID(e Entry, id, result string) Entry {
	e.ID, e.Result = id, result
	return e
}

// remove removes a container, if there is one.
func (d *ContainerDriver) remove(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	if err := d.Engine.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// renameTo names a container, unless it is gone or named so already.
func (d *ContainerDriver) renameTo(ctx context.Context, id, name string) error {
	c, ok, err := d.inspect(ctx, id)
	if err != nil || !ok || c.Name == "/"+name {
		return err
	}
	return d.Engine.ContainerRename(ctx, id, name)
}

// startOnly starts a container, if it does not run already.
func (d *ContainerDriver) startOnly(ctx context.Context, id string) error {
	if err := d.Engine.ContainerStart(ctx, id, container.StartOptions{}); err != nil && !errdefs.IsNotModified(err) {
		return err
	}
	return nil
}

// startHealthy starts a container that a switch stopped and waits for its
// health: the job ends only when it serves again.
func (d *ContainerDriver) startHealthy(ctx context.Context, id, what string) error {
	if err := d.startOnly(ctx, id); err != nil {
		return fmt.Errorf("start %s again: %w", what, err)
	}
	if err := d.waitHealthy(ctx, id, d.Spec.HealthTimeout.D()); err != nil {
		fmt.Fprintf(d.Out, "berth: warning: %s is not healthy either: %v\n", what, err)
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
