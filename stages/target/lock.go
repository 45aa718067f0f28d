package target

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/berthci/berth/stages/driver"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/failure"
)

// Lock labels, read by whoever waits and by cleanup: driver's.
const (
	LabelLockEnv      = driver.LabelLockEnv
	LabelLockKey      = driver.LabelLockKey
	LabelLockJob      = driver.LabelLockJob
	LabelLockDeadline = driver.LabelLockDeadline
)

// LockEngine is what a lock needs from an engine: the same as a ledger.
type LockEngine = LedgerEngine

// Lock staleness: the holder beats every lockBeat while it holds the lock;
// a lock whose holder stopped beating for lockStale (a berth killed with
// SIGKILL, a runner host that died) is taken over, as is one past its
// job's deadline.
const (
	lockBeat  = 5 * time.Second
	lockStale = 30 * time.Second
	beatFile  = "heartbeat"
)

// EngineLock takes an environment's lock on a Docker engine: creating a
// named container is atomic, so the name is the lock. It is a
// never-started container of berth's empty image, so it needs nothing from
// the driver. A container of that name that berth did not make is refused,
// never taken over; a stale lock of berth's is taken over and released by
// its id, so two waiters cannot both remove one lock.
func EngineLock(ctx context.Context, eng LockEngine, out io.Writer, env, key string, h driver.Holder, timeout time.Duration) (func(), error) {
	if err := EnsureEmptyImage(ctx, eng); err != nil {
		return nil, err
	}
	name := driver.LockName(key)
	labels := driver.LockLabels(env, key, h, time.Now())
	var mine, seen string
	err := driver.WaitLock(ctx, driver.LockOps{
		Take: func(ctx context.Context) (bool, error) {
			made, err := eng.ContainerCreate(ctx, &container.Config{Image: EmptyImage, Labels: labels, Entrypoint: []string{"lock"}},
				&container.HostConfig{NetworkMode: "none"}, nil, nil, name)
			switch {
			case err == nil:
				mine = made.ID // its since label stands for a first beat
				return true, nil
			case errdefs.IsConflict(err):
				return false, nil
			default:
				return false, failure.Systemf("take the deploy lock %s: %w", name, err)
			}
		},
		Look: func(ctx context.Context) (driver.LockState, bool, error) {
			ins, err := eng.ContainerInspect(ctx, name)
			if errdefs.IsNotFound(err) {
				return driver.LockState{}, true, nil
			}
			if err != nil {
				return driver.LockState{}, false, failure.Systemf("read the deploy lock %s: %w", name, err)
			}
			l := ins.Config.Labels
			if l[LabelLockKey] != key {
				return driver.LockState{}, false, failure.Systemf("a container named %s that berth did not make blocks deploys of %s: remove it (docker rm %s)", name, env, name)
			}
			seen = ins.ID
			return driver.LockState{Holder: driver.HolderOfLabels(l).String(), Since: l[driver.LabelLockSince],
				Stale: staleLock(ctx, eng, ins)}, false, nil
		},
		// by id: a waiter that took it over first has made a new one
		TakeOver: func(ctx context.Context) (bool, error) {
			return eng.ContainerRemove(ctx, seen, container.RemoveOptions{Force: true}) == nil, nil
		},
	}, out, env, timeout)
	if err != nil {
		return nil, err
	}
	// the holder beats until it unlocks, even while it undoes a cancelled job
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(lockBeat)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				beat(context.WithoutCancel(ctx), eng, mine)
			}
		}
	}()
	return func() {
		close(stop)
		// unlock even when the job was cancelled; only our own lock, by id
		_ = eng.ContainerRemove(context.WithoutCancel(ctx), mine, container.RemoveOptions{Force: true})
	}, nil
}

// beat writes the holder's heartbeat into its lock.
func beat(ctx context.Context, eng LockEngine, id string) {
	now := time.Now()
	stamp := []byte(now.UTC().Format(time.RFC3339Nano))
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	_ = tw.WriteHeader(&tar.Header{Name: beatFile, Mode: 0o644, Size: int64(len(stamp)), ModTime: now})
	_, _ = tw.Write(stamp)
	_ = tw.Close()
	ctx, cancel := context.WithTimeout(ctx, lockBeat)
	defer cancel()
	_ = eng.CopyToContainer(ctx, id, "/", &b, container.CopyToContainerOptions{})
}

// staleLock says why a lock's holder is gone, or "".
func staleLock(ctx context.Context, eng LockEngine, ins container.InspectResponse) string {
	l := ins.Config.Labels
	if why := driver.HolderOfLabels(l).Gone(time.Now()); why != "" {
		return why
	}
	last, err := time.Parse(time.RFC3339, l[driver.LabelLockSince])
	if st, serr := eng.ContainerStatPath(ctx, ins.ID, "/"+beatFile); serr == nil {
		last, err = st.Mtime, nil
	}
	if err == nil && time.Since(last) > lockStale {
		return fmt.Sprintf("its holder has not been heard of for %s (killed?)", time.Since(last).Round(time.Second))
	}
	return ""
}

// LockHolder is the job that holds a lock on an engine, if any.
func LockHolder(ctx context.Context, eng LockEngine, key string) (int64, bool, error) {
	ins, err := eng.ContainerInspect(ctx, driver.LockName(key))
	if errdefs.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, failure.Systemf("read the deploy lock %s: %w", driver.LockName(key), err)
	}
	if ins.Config == nil || ins.Config.Labels[LabelLockKey] != key {
		return 0, false, nil
	}
	job, err := strconv.ParseInt(ins.Config.Labels[LabelLockJob], 10, 64)
	return job, err == nil, nil
}

// RecoverLock is Recover for the drivers with an engine lock: when job
// holds it, recover puts the switch right and the lock goes.
func RecoverLock(ctx context.Context, eng LockEngine, key string, job int64, recover func(context.Context) error) error {
	holder, held, err := LockHolder(ctx, eng, key)
	if err != nil || !held || holder != job {
		return err
	}
	if err := recover(ctx); err != nil {
		return err
	}
	if err := eng.ContainerRemove(context.WithoutCancel(ctx), driver.LockName(key), container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		return failure.Systemf("release the deploy lock %s: %w", driver.LockName(key), err)
	}
	return nil
}
