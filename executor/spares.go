package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"
	"github.com/sirupsen/logrus"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// Spare network namespaces for the helpers of native stages.
//
// A native stage's helper has no job container whose network namespace it
// could join, and on dockerd 20.10 making one (a sandbox and an endpoint on
// berth-helpers) is ~0.3 s of the ~0.45 s its start costs. So berth keeps
// job.helper_spares containers on berth-helpers that only hold a fresh
// namespace. A job takes one, its helper joins it, and once the helper is
// gone the spare is removed: a namespace serves one job and never a second,
// whose DNS the first one's root could have changed. `berth spares` removes
// used spares and makes new ones; cleanup starts it detached, so neither
// is in a job's way.
//
// Taking a spare is atomic on the engine: the claim is a container, made
// and never started, named after the spare, and only one create of a name
// succeeds. The claim outlives the job: a spare with a claim is never
// taken again, and it is removed before its claim.

const (
	RoleSpare = "helper-spare"
	RoleClaim = "helper-spare-claim"
	// LabelSpareJob is on a claim: the job that took the spare.
	LabelSpareJob = "berth.spare-job"

	sparePrefix = HelpersNetwork + "-spare-"
	claimSuffix = "-claim"
	// claimGrace: a claim without its helper may be a prepare under way,
	// for this long at most (cleanup names the job that is over).
	claimGrace = time.Minute
)

// spareSet is what the engine has of spares and their claims.
type spareSet struct {
	spares []container.Summary
	claims map[string]container.Summary // by the spare's name
}

func listSpares(ctx context.Context, eng Engine) (spareSet, error) {
	list, err := eng.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", sparePrefix))})
	if err != nil {
		return spareSet{}, fmt.Errorf("list the helpers' spare network namespaces: %w", err)
	}
	set := spareSet{claims: map[string]container.Summary{}}
	for _, c := range list {
		switch c.Labels[LabelRole] {
		case RoleSpare:
			set.spares = append(set.spares, c)
		case RoleClaim:
			set.claims[strings.TrimSuffix(name(c.Names, c.ID), claimSuffix)] = c
		}
	}
	return set, nil
}

// takeSpare claims a ready spare for the job: its ID, or "" when there is
// none (the helper then makes a namespace of its own).
func (e *Executor) takeSpare(ctx context.Context) string {
	set, err := listSpares(ctx, e.Engine)
	if err != nil {
		e.Log.WithError(err).Warnf("job %d: helper without a spare network namespace", e.Job.ID)
		return ""
	}
	for _, s := range set.spares {
		n := name(s.Names, s.ID)
		if _, taken := set.claims[n]; taken || s.State != "running" {
			continue
		}
		claim, err := e.Engine.ContainerCreate(ctx,
			&container.Config{Image: e.Settings.Job.HelperImage, Entrypoint: []string{"true"},
				Labels: map[string]string{LabelRole: RoleClaim, LabelSpareJob: e.Job.IDString(), LabelVersion: e.Version}},
			&container.HostConfig{NetworkMode: "none"}, nil, nil, n+claimSuffix)
		if err != nil {
			continue // another job's claim came first
		}
		// it may have been used and removed since the list
		if ins, err := e.Engine.ContainerInspect(ctx, s.ID); err == nil && ins.State != nil && ins.State.Running {
			e.Log.Debugf("job %d: helper joins the spare network namespace %s", e.Job.ID, n)
			return s.ID
		}
		_ = e.Engine.ContainerRemove(context.WithoutCancel(ctx), claim.ID, container.RemoveOptions{Force: true})
	}
	return ""
}

// usesSpares says whether this job's helper is one that takes a spare.
func (e *Executor) usesSpares() bool {
	return e.Settings.Job.HelperSpares > 0 && e.Settings.Job.HelperNetwork == "" && e.Native != nil && !e.Job.AfterScript
}

// refill has `berth spares` run, when main wired it.
func (e *Executor) refill(afterJob string) {
	if e.Refill != nil {
		e.Refill(afterJob)
	}
}

// Spares keeps the helpers' spare network namespaces: `berth spares`.
type Spares struct {
	Engine   Engine
	Settings *settings.Settings
	Log      logrus.FieldLogger
	Version  string
	Now      func() time.Time
}

// Fill removes the spares whose job is over, and the stale ones, then
// makes new ones up to job.helper_spares. afterJob, if set, is a job whose
// cleanup stopped its helper: Fill waits a while for that to end.
func (s *Spares) Fill(ctx context.Context, afterJob string) error {
	if afterJob != "" {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		waitC, errC := s.Engine.ContainerWait(wctx, helperNameOf(afterJob), container.WaitConditionNotRunning)
		select {
		case <-waitC:
		case <-errC: // gone already, or it ignored TERM
			_ = s.Engine.ContainerKill(ctx, helperNameOf(afterJob), "KILL")
		}
		cancel()
	}
	set, err := listSpares(ctx, s.Engine)
	if err != nil {
		return failure.System(err)
	}
	used, err := s.removeUsed(ctx, set, afterJob, false)
	if err != nil {
		return failure.System(err)
	}
	ready := 0
	var errs []error
	for _, c := range set.spares {
		n := name(c.Names, c.ID)
		if _, taken := set.claims[n]; taken || used[c.ID] != "" {
			continue
		}
		// stopped (the engine restarted: they have no restart policy), or
		// more than job.helper_spares asks for now
		if c.State != "running" || ready >= s.Settings.Job.HelperSpares {
			errs = append(errs, removeContainer(ctx, s.Engine, c.ID, c.Names))
			continue
		}
		ready++
	}
	if ready < s.Settings.Job.HelperSpares {
		if err := ensureHelpersNetwork(ctx, s.Engine, s.Version); err != nil {
			return err
		}
	}
	made := 0
	for ; ready < s.Settings.Job.HelperSpares; ready++ {
		if err := s.make(ctx); err != nil {
			errs = append(errs, err)
			break
		}
		made++
	}
	s.Log.Infof("helper spares: %d used removed, %d made, %d ready", len(used), made, ready)
	if err := errors.Join(errs...); err != nil {
		return failure.System(err)
	}
	return nil
}

// removeUsed removes the helpers that cleanup killed, then the spares whose
// helper is gone, each before its claim; it returns the spares it removed,
// or with dryRun, those it would remove.
func (s *Spares) removeUsed(ctx context.Context, set spareSet, over string, dryRun bool) (map[string]string, error) {
	helpers, err := s.Engine.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelRole+"="+RoleHelper))})
	if err != nil {
		return nil, fmt.Errorf("list helper containers: %w", err)
	}
	live := map[string]bool{}
	var errs []error
	for _, h := range helpers {
		// killed by their job's cleanup (a helper that started is never
		// needed again once it stops)
		if h.State == "exited" || h.State == "dead" {
			if dryRun {
				continue
			}
			if err := removeContainer(ctx, s.Engine, h.ID, h.Names); err == nil {
				continue
			}
		}
		live[h.Labels[LabelJob]] = true
	}
	byName := map[string]container.Summary{}
	for _, c := range set.spares {
		byName[name(c.Names, c.ID)] = c
	}
	removed := map[string]string{}
	for spare, claim := range set.claims {
		job := claim.Labels[LabelSpareJob]
		if live[job] {
			continue
		}
		if job != over && s.Now().Sub(time.Unix(claim.Created, 0)) < claimGrace {
			continue // its prepare may not have made the helper yet
		}
		c, ok := byName[spare]
		if dryRun {
			if ok {
				removed[c.ID] = spare
			}
			continue
		}
		if ok {
			if err := removeContainer(ctx, s.Engine, c.ID, c.Names); err != nil {
				errs = append(errs, err)
				continue // the claim stays: the spare must never be taken again
			}
			removed[c.ID] = spare
		}
		errs = append(errs, removeContainer(ctx, s.Engine, claim.ID, claim.Names))
	}
	return removed, errors.Join(errs...)
}

// make starts one spare: a container of the helper image on berth-helpers
// that only waits on its open stdin.
func (s *Spares) make(ctx context.Context) error {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	n := sparePrefix + hex.EncodeToString(b)
	img := s.Settings.Job.HelperImage
	c, err := s.Engine.ContainerCreate(ctx,
		&container.Config{Image: img, Entrypoint: []string{"sh"}, OpenStdin: true,
			Labels: map[string]string{LabelRole: RoleSpare, LabelVersion: s.Version}},
		&container.HostConfig{NetworkMode: HelpersNetwork}, nil, nil, n)
	if err != nil {
		return fmt.Errorf("create the spare network namespace %s from %s: %w (check job.helper_image)", n, img, err)
	}
	if err := s.Engine.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		_ = s.Engine.ContainerRemove(context.WithoutCancel(ctx), c.ID, container.RemoveOptions{Force: true})
		return fmt.Errorf("start the spare network namespace %s: %w", n, err)
	}
	return nil
}

// ensureHelpersNetwork makes berth-helpers, with traffic between its
// containers off, unless it is there (the engine refuses a second network
// of the name). Jobs share it; cleanup and sweep leave it, as they only
// remove what carries a job's label.
func ensureHelpersNetwork(ctx context.Context, eng Engine, version string) error {
	_, err := eng.NetworkCreate(ctx, HelpersNetwork, network.CreateOptions{Driver: "bridge",
		Options: map[string]string{"com.docker.network.bridge.enable_icc": "false"},
		Labels:  map[string]string{LabelRole: RoleHelpers, LabelVersion: version}})
	if err != nil && !errdefs.IsConflict(err) {
		return failure.Systemf("create network %s for the helpers of native stages: %w", HelpersNetwork, err)
	}
	return nil
}
