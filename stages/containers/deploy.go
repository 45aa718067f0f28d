package containers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
)

// Deploy: pull by digest, create the new container while the old one still
// serves, stop the old one, start the new one, wait for health. On failure,
// or when the job is cancelled, the new one is stopped (kept as failed when
// it got as far as starting) and every step is put back: the old one serves
// again.
func (d *Driver) Deploy(ctx context.Context, r driver.Release) error {
	if d.proxied() {
		return d.proxyDeploy(ctx, r)
	}
	p, err := d.planDeploy(ctx, r)
	if err != nil {
		return err
	}
	return p.finish(ctx, d.steps("deploy").Run(ctx, p.steps()))
}

// deployment is one deploy: what serves now, what is to, and what the
// steps found out on the way.
type deployment struct {
	d    *Driver
	r    driver.Release
	name string
	led  target.Ledger

	old    container.InspectResponse
	hasOld bool
	// anchorRef is the anchor image, "" when the container publishes its
	// ports itself; anc is the anchor in place, moving when it is made
	// again (ports or networks changed) or retired.
	anchorRef string
	anc       container.InspectResponse
	hasAnc    bool
	moving    bool
	retired   string
	rc        rendered
	sw        *target.Switch

	healthErr error
	kept      bool // the new one got as far as starting: kept, stopped, for its logs
}

// planDeploy reads what serves and renders the new container.
func (d *Driver) planDeploy(ctx context.Context, r driver.Release) (*deployment, error) {
	if err := target.PullOnTarget(ctx, d.Engine, d.Creds, d.Out, r.Image); err != nil {
		return nil, err
	}
	p := &deployment{d: d, r: r, name: d.Spec.Name, retired: AnchorName(d.Spec.Name) + "-old"}
	var err error
	if p.led, err = d.ledger(ctx); err != nil {
		return nil, err
	}
	if err := d.recoverSwitch(ctx, &p.led); err != nil {
		return nil, err
	}
	if p.old, p.hasOld, err = d.inspect(ctx, p.name); err != nil {
		return nil, err
	}
	if p.hasOld {
		if _, known := p.led.Find(p.old.ID); !known { // started by hand, or the ledger was lost
			p.led.Push(adoptedEntry(p.old), driver.ResultReplaced)
		}
	}
	anchorRef, why, err := d.anchorImage(ctx)
	if err != nil {
		return nil, err
	}
	p.anchorRef = anchorRef
	if why != "" {
		joblog.Step(d.Out, "%s publishes its ports itself (%s): a switch costs about a second of outage", p.name, why)
	}
	if p.rc, err = d.render(r, p.old, p.hasOld, anchorRef != ""); err != nil {
		return nil, err
	}
	if p.anc, p.hasAnc, err = d.inspect(ctx, AnchorName(p.name)); err != nil {
		return nil, err
	}
	// The anchor is made again when the ports or networks changed, and
	// retired when the ports move onto the container. A new one is created
	// beside the old, and started once the old one let go of the ports.
	p.moving = p.hasAnc && (anchorRef == "" || p.anc.Config.Labels[labelAnchorLayout] != p.rc.layout)
	p.sw = &target.Switch{Kind: "deploy", Job: r.Job, Since: time.Now().UTC(), Entry: driver.EntryOf(r, "", driver.ResultServing),
		ToName: fmt.Sprintf("%s-new-%d", p.name, r.Job)}
	if p.hasOld {
		p.sw.From = p.old.ID
	}
	if p.moving {
		p.sw.OldAnchor = p.anc.ID
	}
	return p, nil
}

// steps are the deploy's steps, each with its undo, in order; those that
// do not apply (no old container, no anchor to move) are left out.
func (p *deployment) steps() []driver.Step {
	d, sw, name := p.d, p.sw, p.name
	var steps []driver.Step
	if p.anchorRef != "" && (!p.hasAnc || p.moving) {
		steps = append(steps, driver.Step{Name: "create-anchor",
			Do: func(ctx context.Context) (err error) {
				sw.NewAnchor, err = d.createAnchor(ctx, p.anchorRef, p.rc, p.r.Job)
				return err
			},
			Undo: func(ctx context.Context) error { return d.remove(ctx, sw.NewAnchor) }})
	}
	steps = append(steps,
		driver.Step{Name: "create", Do: p.create,
			Undo: func(ctx context.Context) error {
				if p.kept {
					return nil
				}
				return d.remove(ctx, sw.To)
			}},
		driver.Step{Name: "journal", Do: func(ctx context.Context) error {
			p.led.Switch = sw
			return d.store().Write(ctx, p.led)
		}})
	if p.hasOld && p.old.State.Running {
		steps = append(steps, driver.Step{Name: "stop-old",
			Do:   func(ctx context.Context) error { return d.stop(ctx, p.old.ID) },
			Undo: func(ctx context.Context) error { return d.startHealthy(ctx, p.old.ID, "the previous "+name) }})
	}
	if p.hasOld {
		steps = append(steps, driver.Step{Name: "rename-old",
			Do: func(ctx context.Context) error {
				if err := d.Engine.ContainerRename(ctx, p.old.ID, keptName(name, p.old.ID, "")); err != nil {
					return failure.Systemf("rename the old %s container: %w", name, err)
				}
				return nil
			},
			Undo: func(ctx context.Context) error { return d.renameTo(ctx, p.old.ID, name) }})
	}
	if p.moving {
		steps = append(steps, driver.Step{Name: "retire-anchor", Do: p.retireAnchor,
			Undo: func(ctx context.Context) error {
				if err := d.renameTo(ctx, p.anc.ID, AnchorName(name)); err != nil {
					return err
				}
				return d.startOnly(ctx, p.anc.ID)
			}})
	}
	return append(steps,
		driver.Step{Name: "start-anchor",
			Do: func(ctx context.Context) error { return d.startAnchor(ctx, sw.NewAnchor, p.anc, p.hasAnc && !p.moving) },
			// the new anchor lets go of the ports before the old one takes them again
			Undo: func(ctx context.Context) error { return d.remove(ctx, sw.NewAnchor) }},
		driver.Step{Name: "rename-new",
			Do: func(ctx context.Context) error {
				if err := d.Engine.ContainerRename(ctx, sw.To, name); err != nil {
					return failure.Systemf("rename the new container to %s: %w", name, err)
				}
				return nil
			},
			Undo: func(ctx context.Context) error { return d.renameTo(ctx, sw.To, keptName(name, sw.To, "failed")) }},
		driver.Step{Name: "start-new", Do: p.startNew,
			Undo: func(ctx context.Context) error { return d.stop(ctx, sw.To) }},
	)
}

// create makes the new container beside the old one, in the anchor's
// network namespace when there is an anchor.
func (p *deployment) create(ctx context.Context) error {
	d, sw := p.d, p.sw
	_ = d.Engine.ContainerRemove(ctx, sw.ToName, container.RemoveOptions{Force: true}) // a crashed attempt's leftover
	if p.anchorRef != "" {
		anchorID := sw.NewAnchor
		if anchorID == "" {
			anchorID = p.anc.ID
		}
		// by id: the engine resolves a name once, at create
		p.rc.host.NetworkMode = container.NetworkMode("container:" + anchorID)
	}
	made, err := d.Engine.ContainerCreate(ctx, p.rc.cfg, p.rc.host, p.rc.net, nil, sw.ToName)
	if err != nil {
		return failure.Buildf("create the new %s container: %v: check [environments.%s.container] in berth.toml", p.name, err, d.Env)
	}
	sw.To = made.ID
	return nil
}

// retireAnchor stops the old anchor and renames it out of the way.
func (p *deployment) retireAnchor(ctx context.Context) error {
	d := p.d
	_ = d.Engine.ContainerRemove(ctx, p.retired, container.RemoveOptions{Force: true})
	if err := d.stop(ctx, p.anc.ID); err != nil {
		return err
	}
	if err := d.Engine.ContainerRename(ctx, p.anc.ID, p.retired); err != nil {
		return failure.Systemf("rename the old anchor %s: %w", AnchorName(p.name), err)
	}
	return nil
}

// startNew starts the new container and waits for its health.
func (p *deployment) startNew(ctx context.Context) error {
	d, sw := p.d, p.sw
	p.kept = true
	t := time.Now()
	p.healthErr = d.Engine.ContainerStart(ctx, sw.To, container.StartOptions{})
	if p.healthErr == nil {
		p.healthErr = d.waitHealthy(ctx, sw.To, d.Spec.HealthTimeout.D())
	}
	if p.healthErr != nil {
		return p.healthErr
	}
	joblog.Step(d.Out, "%s serves %s (healthy after %s)", p.name, p.r.Image, time.Since(t).Round(time.Millisecond))
	return nil
}

// finish records what the steps ended with: the new version serving, or
// the old one again and why.
func (p *deployment) finish(ctx context.Context, err error) error {
	d, sw, r := p.d, p.sw, p.r
	if err == nil {
		if d.Pause != nil {
			d.Pause(ctx, "deploy:record")
		}
		// the new version serves: the records follow, cancelled or not
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if p.moving {
			_ = d.Engine.ContainerRemove(cctx, p.retired, container.RemoveOptions{Force: true})
		}
		p.led.Switch = nil
		p.led.Push(driver.EntryOf(r, sw.To, driver.ResultServing), driver.ResultReplaced)
		return d.prune(cctx, p.led)
	}
	var se *driver.StepError
	if !errors.As(err, &se) {
		return err
	}
	back := "nothing ran before, so nothing serves now"
	if p.hasOld {
		back = "the previous container serves again"
	}
	if p.kept && sw.To != "" {
		p.led.Push(driver.EntryOf(r, sw.To, driver.ResultFailed), "")
	}
	var unhealthy func() error
	if se.Step == "start-new" && p.healthErr != nil {
		unhealthy = func() error {
			logs := d.lastLogs(ctx, sw.To, 10)
			return failure.Buildf("the new %s (%s) did not become healthy: %v; %s.%s", p.name, r.Tag, p.healthErr, back, logs)
		}
	}
	return d.switchFailed(ctx, &p.led, se, back, unhealthy)
}

// switchFailed records how a failed switch ended (its journal cleared
// when everything was put back) and is the job's error for it; unhealthy,
// when set, is the error of a release that never became healthy.
func (d *Driver) switchFailed(ctx context.Context, led *target.Ledger, se *driver.StepError, back string, unhealthy func() error) error {
	if se.UndoErr == nil {
		led.Switch = nil
	}
	if werr := d.store().Write(ctx, *led); werr != nil {
		joblog.Warn(d.Out, "%v", werr)
	}
	switch {
	case se.UndoErr != nil:
		return failure.Systemf("%v; putting the previous version back failed too (%v): the next deploy, berth rollback %s or this job's cleanup finishes it", se.Err, se.UndoErr, d.Env)
	case se.Cancelled:
		return failure.Buildf("%v: %s", se.Err, back)
	case unhealthy != nil:
		return unhealthy()
	default:
		return wrapClass(se.Err, "%v; %s", se.Err, back)
	}
}
