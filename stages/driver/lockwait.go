package driver

import (
	"context"
	"io"
	"time"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
)

// A lock at a target (a container on a Docker engine, a Lease on
// Kubernetes) is taken the same way: try to create it; when it is there,
// take it over if its holder is gone, else wait, saying once who holds it,
// until the timeout. The drivers give the operations; this is the loop.

// LockState is what a waiter sees of the lock another holds.
type LockState struct {
	Holder string // "job 12 of pipeline 3 (alice)"
	Since  string
	// Stale says why its holder is gone, "" while it lives.
	Stale string
}

// LockOps are one kind of lock's operations.
type LockOps struct {
	// Take creates the lock; taken is false when another holds it.
	Take func(ctx context.Context) (taken bool, err error)
	// Look reads the lock another holds; gone is true when it was
	// released meanwhile.
	Look func(ctx context.Context) (st LockState, gone bool, err error)
	// TakeOver removes a stale lock (the one Look saw, not a newer one);
	// it reports whether this waiter removed it.
	TakeOver func(ctx context.Context) (bool, error)
}

// WaitLock takes env's lock with ops, waiting up to timeout.
func WaitLock(ctx context.Context, ops LockOps, out io.Writer, env string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	told := false
	for {
		taken, err := ops.Take(ctx)
		if err != nil || taken {
			return err
		}
		st, gone, err := ops.Look(ctx)
		if err != nil {
			return err
		}
		if gone {
			continue // released meanwhile
		}
		if st.Stale != "" {
			removed, err := ops.TakeOver(ctx)
			if err != nil {
				return err
			}
			if removed {
				joblog.Step(out, "taking over the lock of %s from %s: %s", env, st.Holder, st.Stale)
			} else {
				time.Sleep(50 * time.Millisecond) // another waiter removes it
			}
			continue
		}
		if !told {
			joblog.Step(out, "waiting for %s: %s deploys it since %s", env, st.Holder, st.Since)
			told = true
		}
		if time.Now().After(deadline) {
			return failure.Buildf("%s is still locked by %s after %s: retry the job, or raise lock_timeout for the environment", env, st.Holder, timeout)
		}
		select {
		case <-ctx.Done():
			return failure.Buildf("cancelled while waiting for the lock of %s", env)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
