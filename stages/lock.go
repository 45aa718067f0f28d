package stages

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor"
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
)

// LockName is the container that is the deploy lock of a target key (a
// Lease's name for the kube driver).
func LockName(key string) string { return "berth-lock-" + key }

// LockEngine is what a lock needs from an engine: the same as a ledger.
type LockEngine = LedgerEngine

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
	}
	deadline := now.Add(timeout)
	told := false
	var mine string
	for {
		made, err := eng.ContainerCreate(ctx, &container.Config{Image: EmptyImage, Labels: labels, Entrypoint: []string{"lock"}},
			&container.HostConfig{NetworkMode: "none"}, nil, nil, name)
		if err == nil {
			mine = made.ID
			break
		}
		if !errdefs.IsConflict(err) {
			return nil, executor.Systemf("take the deploy lock %s: %w", name, err)
		}
		ins, ierr := eng.ContainerInspect(ctx, name)
		if errdefs.IsNotFound(ierr) {
			continue // released meanwhile
		}
		if ierr != nil {
			return nil, executor.Systemf("read the deploy lock %s: %w", name, ierr)
		}
		l := ins.Config.Labels
		if l[LabelLockKey] != key {
			return nil, executor.Systemf("a container named %s that berth did not make blocks deploys of %s: remove it (docker rm %s)", name, env, name)
		}
		if d, perr := time.Parse(time.RFC3339, l[LabelLockDeadline]); perr == nil && time.Now().After(d) {
			fmt.Fprintf(out, "berth: taking over the lock of %s from job %s (pipeline %s): its job is over since %s\n", env, l[LabelLockJob], l[LabelLockPipeline], d.Format(time.RFC3339))
			// by id: a waiter that took it over first has made a new one
			_ = eng.ContainerRemove(ctx, ins.ID, container.RemoveOptions{Force: true})
			continue
		}
		if !told {
			fmt.Fprintf(out, "berth: waiting for %s: job %s of pipeline %s (%s) deploys it since %s\n", env, l[LabelLockJob], l[LabelLockPipeline], l[LabelLockBy], l[LabelLockSince])
			told = true
		}
		if time.Now().After(deadline) {
			return nil, executor.Buildf("%s is still locked by job %s of pipeline %s after %s: retry the job, or raise lock_timeout for the environment", env, l[LabelLockJob], l[LabelLockPipeline], timeout)
		}
		select {
		case <-ctx.Done():
			return nil, executor.Buildf("cancelled while waiting for the lock of %s", env)
		case <-time.After(500 * time.Millisecond):
		}
	}
	return func() {
		// unlock even when the job was cancelled; only our own lock, by id
		_ = eng.ContainerRemove(context.WithoutCancel(ctx), mine, container.RemoveOptions{Force: true})
	}, nil
}
