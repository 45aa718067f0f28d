package stages

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/failure"
)

// Lock labels, read by whoever waits and by cleanup.
const (
	LabelLockEnv      = "berth.lock.env"
	LabelLockKey      = "berth.lock.key"
	LabelLockJob      = executor.LabelLockJob
	LabelLockPipeline = "berth.lock.pipeline"
	LabelLockBy       = "berth.lock.by"
	LabelLockSince    = "berth.lock.since"
	LabelLockDeadline = "berth.lock.deadline"
	LabelLockHost     = "berth.lock.host"
	LabelLockPID      = "berth.lock.pid"
)

// LockName is the container that is the deploy lock of a target key (a
// Lease's name for the kube driver).
func LockName(key string) string { return "berth-lock-" + key }

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
func EngineLock(ctx context.Context, eng LockEngine, out io.Writer, env, key string, h Holder, timeout time.Duration) (func(), error) {
	if err := EnsureEmptyImage(ctx, eng); err != nil {
		return nil, err
	}
	name := LockName(key)
	now := time.Now()
	labels := map[string]string{
		LabelLockEnv: env, LabelLockKey: key, LabelLockJob: strconv.FormatInt(h.Job, 10), LabelLockPipeline: strconv.FormatInt(h.Pipeline, 10),
		LabelLockBy: h.By, LabelLockSince: now.UTC().Format(time.RFC3339), LabelLockDeadline: h.Deadline.UTC().Format(time.RFC3339),
		LabelLockHost: h.Host, LabelLockPID: strconv.Itoa(h.PID),
	}
	deadline := now.Add(timeout)
	told := false
	var mine string
	for {
		made, err := eng.ContainerCreate(ctx, &container.Config{Image: EmptyImage, Labels: labels, Entrypoint: []string{"lock"}},
			&container.HostConfig{NetworkMode: "none"}, nil, nil, name)
		if err == nil {
			mine = made.ID // its since label stands for a first beat
			break
		}
		if !errdefs.IsConflict(err) {
			return nil, failure.Systemf("take the deploy lock %s: %w", name, err)
		}
		ins, ierr := eng.ContainerInspect(ctx, name)
		if errdefs.IsNotFound(ierr) {
			continue // released meanwhile
		}
		if ierr != nil {
			return nil, failure.Systemf("read the deploy lock %s: %w", name, ierr)
		}
		l := ins.Config.Labels
		if l[LabelLockKey] != key {
			return nil, failure.Systemf("a container named %s that berth did not make blocks deploys of %s: remove it (docker rm %s)", name, env, name)
		}
		if why := staleLock(ctx, eng, ins); why != "" {
			// by id: a waiter that took it over first has made a new one;
			// only the one whose removal went through says so
			if eng.ContainerRemove(ctx, ins.ID, container.RemoveOptions{Force: true}) == nil {
				fmt.Fprintf(out, "berth: taking over the lock of %s from job %s (pipeline %s): %s\n", env, l[LabelLockJob], l[LabelLockPipeline], why)
				continue
			}
			time.Sleep(50 * time.Millisecond) // being removed by another waiter
			continue
		}
		if !told {
			fmt.Fprintf(out, "berth: waiting for %s: job %s of pipeline %s (%s) deploys it since %s\n", env, l[LabelLockJob], l[LabelLockPipeline], l[LabelLockBy], l[LabelLockSince])
			told = true
		}
		if time.Now().After(deadline) {
			return nil, failure.Buildf("%s is still locked by job %s of pipeline %s after %s: retry the job, or raise lock_timeout for the environment", env, l[LabelLockJob], l[LabelLockPipeline], timeout)
		}
		select {
		case <-ctx.Done():
			return nil, failure.Buildf("cancelled while waiting for the lock of %s", env)
		case <-time.After(500 * time.Millisecond):
		}
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
	if d, err := time.Parse(time.RFC3339, l[LabelLockDeadline]); err == nil && time.Now().After(d) {
		return "its job is over since " + d.Format(time.RFC3339)
	}
	if pid, err := strconv.Atoi(l[LabelLockPID]); err == nil && l[LabelLockHost] != "" && l[LabelLockHost] == BootID() && ProcessGone(pid) {
		return fmt.Sprintf("its berth (pid %d on this host) is gone", pid)
	}
	last, err := time.Parse(time.RFC3339, l[LabelLockSince])
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
	ins, err := eng.ContainerInspect(ctx, LockName(key))
	if errdefs.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, failure.Systemf("read the deploy lock %s: %w", LockName(key), err)
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
	if err := eng.ContainerRemove(context.WithoutCancel(ctx), LockName(key), container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		return failure.Systemf("release the deploy lock %s: %w", LockName(key), err)
	}
	return nil
}
