package stages

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthci/berth/executor"
)

// Lock labels, read by whoever waits and by cleanup.
const (
	LabelLockEnv      = "berth.lock.env"
	LabelLockJob      = executor.LabelLockJob
	LabelLockPipeline = "berth.lock.pipeline"
	LabelLockBy       = "berth.lock.by"
	LabelLockSince    = "berth.lock.since"
	LabelLockDeadline = "berth.lock.deadline"
)

// LockName is the container that is an environment's deploy lock.
func LockName(env string) string { return "berth-lock-" + env }

// LockEngine is what a lock needs from an engine.
type LockEngine interface {
	Puller
	ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, net *network.NetworkingConfig, platform *ocispec.Platform, name string) (container.CreateResponse, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerRemove(ctx context.Context, id string, opts container.RemoveOptions) error
}

// EngineLock takes an environment's lock on a Docker engine: creating a
// named container is atomic, so the name is the lock. It is never started,
// but it is a container of h.Image, which is pulled first: a remote target
// may not have it yet.
func EngineLock(ctx context.Context, eng LockEngine, creds *Credentials, out io.Writer, env string, h Holder, timeout time.Duration) (func(), error) {
	if h.Image == "" {
		return nil, executor.Systemf("no image on the target to make the lock of %s from: deploy a version first", env)
	}
	if err := PullOnTarget(ctx, eng, creds, h.Image); err != nil {
		return nil, err
	}
	name := LockName(env)
	now := time.Now()
	labels := map[string]string{
		LabelLockEnv: env, LabelLockJob: strconv.FormatInt(h.Job, 10), LabelLockPipeline: strconv.FormatInt(h.Pipeline, 10),
		LabelLockBy: h.By, LabelLockSince: now.UTC().Format(time.RFC3339), LabelLockDeadline: h.Deadline.UTC().Format(time.RFC3339),
	}
	deadline := now.Add(timeout)
	told := false
	for {
		_, err := eng.ContainerCreate(ctx, &container.Config{Image: h.Image, Labels: labels, Entrypoint: []string{"lock"}}, nil, nil, nil, name)
		if err == nil {
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
		if d, perr := time.Parse(time.RFC3339, l[LabelLockDeadline]); perr == nil && time.Now().After(d) {
			fmt.Fprintf(out, "berth: taking over the lock of %s from job %s (pipeline %s): its job is over since %s\n", env, l[LabelLockJob], l[LabelLockPipeline], d.Format(time.RFC3339))
			_ = eng.ContainerRemove(ctx, name, container.RemoveOptions{Force: true})
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
	job := strconv.FormatInt(h.Job, 10)
	return func() {
		// unlock even when the job was cancelled; only our own lock
		ctx := context.WithoutCancel(ctx)
		if ins, err := eng.ContainerInspect(ctx, name); err == nil && ins.Config.Labels[LabelLockJob] == job {
			_ = eng.ContainerRemove(ctx, name, container.RemoveOptions{Force: true})
		}
	}, nil
}
