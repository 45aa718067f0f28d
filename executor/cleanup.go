package executor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/stages/driver"
)

// Cleanup removes everything the job created: its containers, its network
// and its builds dir. It is idempotent and works without a prepare.
func (e *Executor) Cleanup(ctx context.Context) error {
	var errs []error
	// first the builds dir: what root wrote in it goes through the helper
	dir := JobDir(e.Settings, e.Job)
	if err := removeJobDir(e.Settings.BuildsDir, dir); errors.Is(err, fs.ErrPermission) {
		if cerr := e.clearAsRoot(ctx, dir); cerr != nil {
			e.Log.WithError(cerr).Warnf("job %d: clear %s as root", e.Job.ID, dir)
		}
		errs = append(errs, removeJobDir(e.Settings.BuildsDir, dir))
	} else {
		errs = append(errs, err)
	}
	jobs := e.jobFilter()
	deferred := e.usesSpares() && e.Refill != nil
	if deferred {
		// a native job's helper: stopped now, with all it started (TERM
		// ends its init, and the kernel the rest: the engine's KILL would
		// wait for the container's teardown), and removed by `berth
		// spares` with its spare network namespace, off the job's way
		if err := e.Engine.ContainerKill(ctx, HelperName(e.Job), "TERM"); err == nil || errdefs.IsNotFound(err) {
			jobs.Add("label", LabelRole+"="+RoleJob)
		}
	}
	n, err := e.removeContainers(ctx, container.ListOptions{All: true, Filters: jobs})
	errs = append(errs, err)
	// deploy locks this job still holds on this engine: a cancelled or
	// crashed deploy never leaves one behind
	locks := filters.NewArgs(filters.Arg("label", driver.LabelLockJob+"="+e.Job.IDString()))
	_, err = e.removeContainers(ctx, container.ListOptions{All: true, Filters: locks})
	errs = append(errs, err)
	nets, err := e.Engine.NetworkList(ctx, network.ListOptions{Filters: e.jobFilter()})
	if err != nil {
		errs = append(errs, fmt.Errorf("list networks of job %d: %w", e.Job.ID, err))
	}
	for _, nw := range nets {
		errs = append(errs, removeNetwork(ctx, e.Engine, nw.ID, nw.Name))
	}
	if deferred {
		e.refill(e.Job.IDString()) // its helper and spare go, a new spare comes
	}
	if err := errors.Join(errs...); err != nil {
		return failure.System(err)
	}
	e.Log.Infof("job %d: cleaned up %d containers, %d networks", e.Job.ID, n, len(nets))
	return nil
}

// removeContainers removes the listed containers side by side: each force
// removal waits for its container to die, and they need not wait for each
// other.
func (e *Executor) removeContainers(ctx context.Context, opts container.ListOptions) (int, error) {
	list, err := e.Engine.ContainerList(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("list containers: %w", err)
	}
	errs := make([]error, len(list))
	var wg sync.WaitGroup
	for i, c := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = removeContainer(ctx, e.Engine, c.ID, c.Names)
		}()
	}
	wg.Wait()
	return len(list), errors.Join(errs...)
}

func removeContainer(ctx context.Context, eng Engine, id string, names []string) error {
	err := eng.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !errdefs.IsNotFound(err) && !isRemovalInProgress(err) {
		return fmt.Errorf("remove container %s: %w", strings.Join(names, ","), err)
	}
	return nil
}

func removeNetwork(ctx context.Context, eng Engine, id, name string) error {
	if err := eng.NetworkRemove(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	return nil
}

func isRemovalInProgress(err error) bool {
	return strings.Contains(err.Error(), "is already in progress")
}

// removeJobDir removes a job's builds dir, refusing anything that is not
// strictly below the builds dir.
func removeJobDir(buildsDir, dir string) error {
	rel, err := filepath.Rel(buildsDir, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("refusing to remove %s: not below builds_dir %s", dir, buildsDir)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove builds dir %s: %w", dir, err)
	}
	return nil
}
