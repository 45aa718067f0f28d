package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/berthci/berth/executor/joblog"
)

// A change to what serves is a list of named steps, each with the undo that
// puts it back. One small engine runs them: in order, and on a failure, or
// a cancelled job, the undos of what was done, in reverse. Undos run on a
// context of their own, bounded, that a cancelled job does not cut short:
// a SIGTERM from the runner leaves the last good version serving.

// Step is one change, and what puts it back.
type Step struct {
	Name string
	Do   func(ctx context.Context) error
	// Undo puts back what Do changed; it is also run when Do failed half
	// way, so it tolerates a Do that did nothing. nil: nothing to put back.
	Undo func(ctx context.Context) error
}

// Steps runs a list of steps.
type Steps struct {
	// What names the change in messages ("deploy of web").
	What string
	// UndoTimeout bounds all the undos together.
	UndoTimeout time.Duration
	// Pause is called before each step with its name: the test rig's
	// fault injection (BERTH_TEST_PAUSE_AT). nil does nothing.
	Pause func(ctx context.Context, step string)
	// Out gets a line for each undo that fails.
	Out io.Writer
}

// StepError is a step that failed, or was cancelled, and how the undo went.
type StepError struct {
	Step      string
	Err       error
	Cancelled bool
	// UndoErr is what could not be put back; nil when everything was.
	UndoErr error
}

func (e *StepError) Error() string { return e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Run runs the steps; on a failure or cancellation it undoes and returns a
// *StepError.
func (s Steps) Run(ctx context.Context, steps []Step) error {
	for i, st := range steps {
		if s.Pause != nil {
			s.Pause(ctx, st.Name)
		}
		err := ctx.Err()
		cancelled := err != nil
		if err == nil {
			err = st.Do(ctx)
			cancelled = ctx.Err() != nil
		}
		if err == nil {
			continue
		}
		if cancelled {
			err = fmt.Errorf("cancelled at step %s of the %s", st.Name, s.What)
		}
		return &StepError{Step: st.Name, Err: err, Cancelled: cancelled, UndoErr: s.undo(ctx, steps[:i+1])}
	}
	return nil
}

// undo runs the undos of done, the last first.
func (s Steps) undo(ctx context.Context, done []Step) error {
	timeout := s.UndoTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	var errs []error
	for i := len(done) - 1; i >= 0; i-- {
		if done[i].Undo == nil {
			continue
		}
		if err := done[i].Undo(uctx); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", done[i].Name, err))
			if s.Out != nil {
				joblog.Warn(s.Out, "could not undo %s of the %s: %v", done[i].Name, s.What, err)
			}
		}
	}
	return errors.Join(errs...)
}
