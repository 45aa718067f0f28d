package stages

import (
	"context"
	"time"
)

// Release is one version of an environment: what deploy puts in place.
type Release struct {
	Env      string
	Image    string // repository@sha256:..., what actually runs
	Digest   string
	Tag      string // the tag, for people
	Ref      string
	Sha      string
	Pipeline int64
	Job      int64
	By       string // who started it
	Project  string // the project that deployed it (job_info)
}

// Record is one line of an environment's history.
type Record struct {
	Time     time.Time
	Ref, Tag string
	Digest   string
	Pipeline int64
	Job      int64
	By       string
	Result   string // serving, replaced, failed, rolled back by X, adopted
	ID       string // driver-specific: container name, revision
}

// Holder is who holds an environment's deploy lock.
type Holder struct {
	Job, Pipeline int64
	By            string
	Deadline      time.Time
}

// Driver is the one interface every environment driver implements; the
// deploy stage is written once against it.
type Driver interface {
	// Lock waits, up to timeout, until this job holds the environment.
	Lock(ctx context.Context, h Holder, timeout time.Duration) (unlock func(), err error)
	// Deploy puts a release in place and waits for it to be healthy; when
	// it is not, the previous version is restored and an error returned.
	Deploy(ctx context.Context, r Release) error
	// Rollback restores the previous version, or the one whose tag or
	// digest is to.
	Rollback(ctx context.Context, to, by string) (Record, error)
	// History lists deployments, newest first.
	History(ctx context.Context) ([]Record, error)
	// Owner is the project that owns the environment, as recorded at the
	// target; when none does yet and claim is set, claim is recorded.
	Owner(ctx context.Context, claim string) (string, error)
}
