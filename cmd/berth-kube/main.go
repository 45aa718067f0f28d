// Command berth-kube runs one operation of berth's kube driver: a
// kube.Request as JSON on stdin, job-log lines on stderr as they happen, a
// kube.Result as JSON on stdout. berth runs it; it is a binary of its own so
// that only Kubernetes deploys pay for client-go's start-up (see package
// kube).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berthci/berth/stages/driver"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/kube"
	"github.com/berthci/berth/kube/rollout"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	res, err := run(ctx)
	if err != nil {
		res.Answer = driver.AnswerOf(err)
	}
	if err := driver.Reply(os.Stdout, res); err != nil {
		fmt.Fprintf(os.Stderr, "berth-kube: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (kube.Result, error) {
	var req kube.Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return kube.Result{}, fmt.Errorf("read the request on stdin (berth-kube is run by berth): %w", err)
	}
	client, err := rollout.NewClient(req.Spec)
	if err != nil {
		return kube.Result{}, failure.Systemf("environment %s: %w", req.Env, err)
	}
	d := &rollout.Driver{Client: client, Env: req.Env, Spec: req.Spec, Out: os.Stderr, Pause: driver.PauseFromEnv(os.Getenv, os.Stderr)}
	if req.Holder.Job != 0 && (req.Op == kube.OpDeploy || req.Op == kube.OpRollback || req.Op == kube.OpRecover) {
		renewing, stop := context.WithCancel(context.WithoutCancel(ctx))
		defer stop()
		go d.Renew(renewing, req.Holder) // while it works, the lock stays its
	}
	switch req.Op {
	case kube.OpLock:
		return kube.Result{}, d.Lock(ctx, req.Holder, req.LockTimeout)
	case kube.OpUnlock:
		return kube.Result{}, d.Unlock(ctx, req.Holder)
	case kube.OpDeploy:
		return kube.Result{}, d.Deploy(ctx, req.Release, req.Login)
	case kube.OpRollback:
		rec, err := d.Rollback(ctx, req.To, req.By)
		return kube.Result{Record: rec}, err
	case kube.OpRecover:
		return kube.Result{}, d.RecoverHeld(ctx, req.Holder)
	case kube.OpOwner:
		o, err := d.Owner(ctx, req.Claim)
		return kube.Result{Owner: o}, err
	case kube.OpHistory:
		h, err := d.History(ctx)
		return kube.Result{History: h}, err
	default:
		return kube.Result{}, fmt.Errorf("unknown operation %q", req.Op)
	}
}
