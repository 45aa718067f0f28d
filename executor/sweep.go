package executor

import (
	"context"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/berthci/berth/executor/settings"
)

// SweepOptions select what `berth sweep` removes.
type SweepOptions struct {
	// OlderThan removes job resources created longer ago than this even if
	// their deadline has not passed; 0 relies on the deadline label only.
	OlderThan time.Duration
	// Project limits the sweep to one project's jobs (its full path).
	Project string
	DryRun  bool
}

// SweepResult says what was (or would be) removed.
type SweepResult struct {
	Containers, Networks, Dirs []string
}

// Sweeper removes what crashed runners left behind. It needs no job.
type Sweeper struct {
	Engine   Engine
	Settings *settings.Settings
	Now      func() time.Time
}

// over says whether a job resource belongs to a job that is surely over:
// past its deadline label, or older than opts.OlderThan.
func (s *Sweeper) over(labels map[string]string, created time.Time, opts SweepOptions) bool {
	now := s.Now()
	if d, err := time.Parse(time.RFC3339, labels[LabelDeadline]); err == nil && now.After(d) {
		return true
	}
	return opts.OlderThan > 0 && now.Sub(created) > opts.OlderThan
}

// Sweep removes containers, networks and builds dirs of jobs that are over.
func (s *Sweeper) Sweep(ctx context.Context, opts SweepOptions) (SweepResult, error) {
	var res SweepResult
	f := filters.NewArgs(filters.Arg("label", LabelJob))
	if opts.Project != "" {
		f.Add("label", LabelProject+"="+opts.Project)
	}
	list, err := s.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return res, Systemf("list job containers: %w", err)
	}
	live := map[string]bool{} // jobs that still have a container we keep
	for _, c := range list {
		if !s.over(c.Labels, time.Unix(c.Created, 0), opts) {
			live[c.Labels[LabelJob]] = true
			continue
		}
		res.Containers = append(res.Containers, name(c.Names, c.ID))
		if !opts.DryRun {
			if err := removeContainer(ctx, s.Engine, c.ID, c.Names); err != nil {
				return res, System(err)
			}
		}
	}
	nets, err := s.Engine.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		return res, Systemf("list job networks: %w", err)
	}
	for _, n := range nets {
		job := n.Labels[LabelJob]
		if live[job] || !s.over(n.Labels, n.Created, opts) {
			continue
		}
		res.Networks = append(res.Networks, n.Name)
		if id, err := strconv.ParseInt(job, 10, 64); err == nil {
			res.Dirs = append(res.Dirs, JobDir(s.Settings, &Job{ID: id}))
		}
		if !opts.DryRun {
			if err := removeNetwork(ctx, s.Engine, n.ID, n.Name); err != nil {
				return res, System(err)
			}
		}
	}
	if !opts.DryRun {
		for _, d := range res.Dirs {
			if err := removeJobDir(s.Settings.BuildsDir, d); err != nil {
				return res, System(err)
			}
		}
	}
	return res, nil
}

func name(names []string, id string) string {
	if len(names) > 0 {
		return names[0][1:] // the engine prefixes names with "/"
	}
	return id[:12]
}
