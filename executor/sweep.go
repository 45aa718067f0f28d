package executor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/berthci/berth/executor/failure"
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

// orphanAge is how old a builds dir with no container or network of its
// job must be before sweep takes it: a job's dir exists from prepare to
// cleanup, and its network for all of that but prepare's first moment.
const orphanAge = 10 * time.Minute

// Sweep removes containers, networks and builds dirs of jobs that are over,
// native deploy jobs' included. It goes on past what it cannot remove and
// returns those errors together, after the result.
func (s *Sweeper) Sweep(ctx context.Context, opts SweepOptions) (SweepResult, error) {
	var res SweepResult
	var errs []error
	f := filters.NewArgs(filters.Arg("label", LabelJob))
	if opts.Project != "" {
		f.Add("label", LabelProject+"="+opts.Project)
	}
	list, err := s.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return res, failure.Systemf("list job containers: %w", err)
	}
	live := map[string]bool{} // jobs that still have a container we keep
	jobs := map[string]bool{} // jobs that had anything on the engine
	for _, c := range list {
		jobs[c.Labels[LabelJob]] = true
		if !s.over(c.Labels, time.Unix(c.Created, 0), opts) {
			live[c.Labels[LabelJob]] = true
			continue
		}
		res.Containers = append(res.Containers, name(c.Names, c.ID))
		if !opts.DryRun {
			errs = append(errs, removeContainer(ctx, s.Engine, c.ID, c.Names))
		}
	}
	nets, err := s.Engine.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list job networks: %w", err))
	}
	for _, n := range nets {
		job := n.Labels[LabelJob]
		jobs[job] = true
		if !s.over(n.Labels, n.Created, opts) {
			live[job] = true
			continue
		}
		if live[job] {
			continue
		}
		res.Networks = append(res.Networks, n.Name)
		if !opts.DryRun {
			errs = append(errs, removeNetwork(ctx, s.Engine, n.ID, n.Name))
		}
	}
	// builds dirs: of the jobs swept, and those that nothing on the engine
	// belongs to any more (a crash before cleanup, a prepare that failed)
	entries, err := os.ReadDir(s.Settings.BuildsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read builds_dir %s: %w", s.Settings.BuildsDir, err))
	}
	for _, e := range entries {
		id, perr := strconv.ParseInt(e.Name(), 10, 64)
		if perr != nil || !e.IsDir() || live[e.Name()] {
			continue
		}
		if !jobs[e.Name()] {
			info, ierr := e.Info()
			if ierr != nil || s.Now().Sub(info.ModTime()) < max(orphanAge, opts.OlderThan) || opts.Project != "" {
				continue // maybe a job in its first moment, or of another project
			}
		}
		dir := JobDir(s.Settings, &Job{ID: id})
		res.Dirs = append(res.Dirs, dir)
		if !opts.DryRun {
			errs = append(errs, s.removeDir(ctx, dir))
		}
	}
	// spare network namespaces of native helpers whose job is over
	if opts.Project == "" {
		sp := &Spares{Engine: s.Engine, Settings: s.Settings, Now: s.Now}
		set, err := listSpares(ctx, s.Engine)
		if err == nil {
			var used map[string]string
			used, err = sp.removeUsed(ctx, set, "", opts.DryRun)
			for _, n := range used {
				res.Containers = append(res.Containers, n)
			}
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return res, failure.System(err)
	}
	return res, nil
}

// removeDir removes a swept job's builds dir; what root wrote there from a
// container goes through a container of the helper image.
func (s *Sweeper) removeDir(ctx context.Context, dir string) error {
	err := removeJobDir(s.Settings.BuildsDir, dir)
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	cmd := []string{"sh", "-c", `rm -rf "$1"/* "$1"/.[!.]* "$1"/..?*`, "sh", dir}
	if cerr := RunOnce(ctx, s.Engine, s.Settings.Job.HelperImage, cmd, dir, map[string]string{LabelRole: RoleHelper}); cerr != nil {
		return fmt.Errorf("%w (and clearing it in a container: %v)", err, cerr)
	}
	return removeJobDir(s.Settings.BuildsDir, dir)
}

func name(names []string, id string) string {
	if len(names) > 0 {
		return names[0][1:] // the engine prefixes names with "/"
	}
	return id[:12]
}
