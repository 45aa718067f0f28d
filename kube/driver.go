// Package kube is the `kube` environment driver: a Deployment on
// Kubernetes whose containers take each release by digest, rolled out with
// `kubectl rollout status` semantics, undone fast when it cannot succeed.
//
// client-go is heavy to start, so the driver runs in its own binary,
// berth-kube (package kube/rollout); this package is berth's side: one
// helper run per operation. The lock is a Lease and the history the
// Deployment's ReplicaSets, so nothing needs a process to stay up between
// runs.
package kube

import (
	"context"
	"io"
	"time"

	"github.com/berthci/berth/stages/driver"

	"github.com/berthci/berth/executor/settings"
)

// HelperName is the binary that talks to Kubernetes for berth.
const HelperName = "berth-kube"

// Operations of the helper.
const (
	OpLock     = "lock"
	OpUnlock   = "unlock"
	OpDeploy   = "deploy"
	OpRollback = "rollback"
	OpHistory  = "history"
	OpOwner    = "owner"
	OpRecover  = "recover"
)

// Login is a registry login, for the image pull secret.
type Login struct {
	Server   string `json:"server"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// Request is one operation for berth-kube, as JSON on its stdin.
type Request struct {
	Op          string            `json:"op"`
	Env         string            `json:"env"`
	Spec        settings.KubeSpec `json:"spec"`
	Release     driver.Release    `json:"release,omitempty"`
	Holder      driver.Holder     `json:"holder,omitempty"`
	LockTimeout time.Duration     `json:"lock_timeout,omitempty"`
	To          string            `json:"to,omitempty"`
	By          string            `json:"by,omitempty"`
	Login       *Login            `json:"login,omitempty"`
	Claim       string            `json:"claim,omitempty"`
}

// Result is berth-kube's answer on its stdout; job-log lines go to its
// stderr as they happen.
type Result struct {
	driver.Answer
	Record  driver.Record   `json:"record,omitempty"`
	History []driver.Record `json:"history,omitempty"`
	Owner   string          `json:"owner,omitempty"`
}

// Driver is berth's side of a kube environment.
type Driver struct {
	Env    string
	Spec   settings.KubeSpec
	Helper string // path of berth-kube
	// Login is the registry login for the image pull secret: from
	// berth.toml or docker's config, never the job token, which GitLab
	// revokes when the job ends.
	Login func(image string) *Login
	Out   io.Writer
	// holder is the job that took the lock, which the helper renews while
	// it deploys or rolls back.
	holder driver.Holder
}

var _ driver.Driver = (*Driver)(nil)

func (d *Driver) run(ctx context.Context, req Request) (Result, error) {
	req.Env, req.Spec = d.Env, d.Spec
	var res Result
	grace := d.Spec.RolloutTimeout.D() + time.Minute // time to undo a rollout
	if err := driver.RunHelper(ctx, d.Helper, req, &res, d.Out, grace); err != nil {
		return res, err
	}
	return res, res.Err()
}

// Lock takes the environment's Lease; unlock gives it back.
func (d *Driver) Lock(ctx context.Context, h driver.Holder, timeout time.Duration) (func(), error) {
	if _, err := d.run(ctx, Request{Op: OpLock, Holder: h, LockTimeout: timeout}); err != nil {
		return nil, err
	}
	d.holder = h
	return func() {
		_, _ = d.run(context.WithoutCancel(ctx), Request{Op: OpUnlock, Holder: h})
	}, nil
}

// Deploy sets the image by digest and waits for the rollout; a rollout that
// cannot succeed is undone.
func (d *Driver) Deploy(ctx context.Context, r driver.Release) error {
	req := Request{Op: OpDeploy, Release: r, Holder: d.holder}
	if d.Login != nil && d.Spec.PullSecret != "" {
		req.Login = d.Login(r.Image)
	}
	_, err := d.run(ctx, req)
	return err
}

// Rollback goes back to the previous revision, or to the one (or the
// digest) to names.
func (d *Driver) Rollback(ctx context.Context, to, by string) (driver.Record, error) {
	res, err := d.run(ctx, Request{Op: OpRollback, To: to, By: by, Holder: d.holder})
	return res.Record, err
}

// History lists the Deployment's revisions, newest first.
func (d *Driver) History(ctx context.Context) ([]driver.Record, error) {
	res, err := d.run(ctx, Request{Op: OpHistory})
	return res.History, err
}

// Owner is the project that owns the environment (an annotation of the
// Deployment); claim records it when there is none.
func (d *Driver) Owner(ctx context.Context, claim string) (string, error) {
	res, err := d.run(ctx, Request{Op: OpOwner, Claim: claim})
	return res.Owner, err
}

// Recover finishes a rollout that job, killed, left (one that cannot
// succeed is undone) and releases its Lease.
func (d *Driver) Recover(ctx context.Context, job int64) error {
	_, err := d.run(ctx, Request{Op: OpRecover, Holder: driver.Holder{Job: job}})
	return err
}
