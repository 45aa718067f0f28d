package driver

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/berthci/berth/executor/joblog"
)

// Retry runs f, and again after a transient error with doubling waits
// from half a second, up to retries more times, saying each attempt in out
// ("push failed (...), retry 1/4 in 500ms").
func Retry(ctx context.Context, retries int, sleep func(time.Duration), out io.Writer, what string, f func() error) error {
	var err error
	for attempt := 0; attempt <= retries; attempt++ {
		if attempt > 0 {
			wait := time.Duration(1<<(attempt-1)) * 500 * time.Millisecond
			joblog.Step(out, "  %s (%v), retry %d/%d in %s", what, err, attempt, retries, wait)
			sleep(wait)
		}
		if err = f(); err == nil || !Transient(err) || ctx.Err() != nil {
			return Unwrap(err)
		}
	}
	return Unwrap(err)
}

// Permanent marks an error that a retry does not fix.
type Permanent struct{ Err error }

func (p Permanent) Error() string { return p.Err.Error() }

// Unwrap is err without its Permanent mark.
func Unwrap(err error) error {
	var p Permanent
	if errors.As(err, &p) {
		return p.Err
	}
	return err
}

// Transient says whether an error may go away on its own: not one marked
// Permanent, nor a peer that answered no.
func Transient(err error) bool {
	var p Permanent
	if errors.As(err, &p) {
		return false
	}
	s := strings.ToLower(err.Error())
	for _, permanent := range []string{"unauthorized", "denied", "authentication required", "forbidden", "not found", "invalid reference"} {
		if strings.Contains(s, permanent) {
			return false
		}
	}
	return true
}
