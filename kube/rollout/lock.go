package rollout

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/kube"
	"github.com/berthci/berth/stages"
)

// The deploy lock is a Lease in the workload's namespace, named like the
// engine lock. The holder renews it while it works (berth-kube's deploy and
// rollback do); one not renewed for leaseSeconds (a berth killed, a runner
// host gone), or past its job's deadline, is taken over.
const (
	annLockJob      = "berth.lock.job"
	annLockPipeline = "berth.lock.pipeline"
	annLockBy       = "berth.lock.by"
	annLockDeadline = "berth.lock.deadline"
	annLockHost     = "berth.lock.host"
	annLockPID      = "berth.lock.pid"

	leaseSeconds = 60
	// RenewEvery is how often a holder renews the Lease.
	RenewEvery = 10 * time.Second
)

func (d *Driver) leaseName() string { return stages.LockName(d.Env) }

// Lock waits, up to timeout, until this job holds the environment's Lease.
func (d *Driver) Lock(ctx context.Context, h stages.Holder, timeout time.Duration) error {
	leases := d.Client.CoordinationV1().Leases(d.Spec.Namespace)
	now := time.Now()
	secs := int32(leaseSeconds)
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: d.leaseName(), Annotations: map[string]string{
			annLockJob: strconv.FormatInt(h.Job, 10), annLockPipeline: strconv.FormatInt(h.Pipeline, 10), annLockBy: h.By,
			annLockDeadline: h.Deadline.UTC().Format(time.RFC3339),
			annLockHost:     h.Host, annLockPID: strconv.Itoa(h.PID),
		}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr(fmt.Sprintf("job %d of pipeline %d (%s)", h.Job, h.Pipeline, h.By)),
			LeaseDurationSeconds: &secs,
			AcquireTime:          &metav1.MicroTime{Time: now},
			RenewTime:            &metav1.MicroTime{Time: now},
		},
	}
	deadline := now.Add(timeout)
	told := false
	for {
		_, err := leases.Create(ctx, lease, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return failure.Systemf("%s: take the deploy lock (Lease %s in %s): %w", d.Env, d.leaseName(), d.Spec.Namespace, err)
		}
		cur, err := leases.Get(ctx, d.leaseName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // released meanwhile
		}
		if err != nil {
			return failure.Systemf("%s: read the deploy lock: %w", d.Env, err)
		}
		holder, since := deref(cur.Spec.HolderIdentity), cur.Spec.AcquireTime
		if why := staleLease(cur); why != "" {
			fmt.Fprintf(d.Out, "berth: taking over the lock of %s from %s: %s\n", d.Env, holder, why)
			_ = leases.Delete(ctx, d.leaseName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &cur.ResourceVersion}})
			continue
		}
		if !told {
			at := ""
			if since != nil {
				at = since.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(d.Out, "berth: waiting for %s: %s deploys it since %s\n", d.Env, holder, at)
			told = true
		}
		if time.Now().After(deadline) {
			return failure.Buildf("%s is still locked by %s after %s: retry the job, or raise lock_timeout for the environment", d.Env, holder, timeout)
		}
		select {
		case <-ctx.Done():
			return failure.Buildf("cancelled while waiting for the lock of %s", d.Env)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Unlock gives the Lease back if this job still holds it.
func (d *Driver) Unlock(ctx context.Context, h stages.Holder) error {
	leases := d.Client.CoordinationV1().Leases(d.Spec.Namespace)
	cur, err := leases.Get(ctx, d.leaseName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return failure.Systemf("%s: read the deploy lock: %w", d.Env, err)
	}
	if cur.Annotations[annLockJob] != strconv.FormatInt(h.Job, 10) {
		return nil // taken over meanwhile
	}
	err = leases.Delete(ctx, d.leaseName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &cur.ResourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) {
		return failure.Systemf("%s: release the deploy lock: %w", d.Env, err)
	}
	return nil
}

// staleLease says why a Lease's holder is gone, or "".
func staleLease(l *coordinationv1.Lease) string {
	if d, err := time.Parse(time.RFC3339, l.Annotations[annLockDeadline]); err == nil && time.Now().After(d) {
		return "its job is over since " + d.Format(time.RFC3339)
	}
	if pid, err := strconv.Atoi(l.Annotations[annLockPID]); err == nil && l.Annotations[annLockHost] != "" && l.Annotations[annLockHost] == stages.BootID() && stages.ProcessGone(pid) {
		return fmt.Sprintf("its berth (pid %d on this host) is gone", pid)
	}
	last := l.Spec.RenewTime
	if last == nil {
		last = l.Spec.AcquireTime
	}
	if last != nil && l.Spec.LeaseDurationSeconds != nil {
		if gone := time.Since(last.Time); gone > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
			return fmt.Sprintf("its holder has not renewed it for %s (killed?)", gone.Round(time.Second))
		}
	}
	return ""
}

// Renew keeps the Lease while job h holds it; it stops when ctx ends.
func (d *Driver) Renew(ctx context.Context, h stages.Holder) {
	leases := d.Client.CoordinationV1().Leases(d.Spec.Namespace)
	t := time.NewTicker(RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, err := leases.Get(ctx, d.leaseName(), metav1.GetOptions{})
		if err != nil || cur.Annotations[annLockJob] != strconv.FormatInt(h.Job, 10) {
			continue
		}
		cur.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		_, _ = leases.Update(ctx, cur, metav1.UpdateOptions{})
	}
}

// RecoverHeld is Recover for job: when it still holds the Lease (killed
// mid-way), its rollout is put right and the Lease released.
func (d *Driver) RecoverHeld(ctx context.Context, h stages.Holder) error {
	cur, err := d.Client.CoordinationV1().Leases(d.Spec.Namespace).Get(ctx, d.leaseName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return failure.Systemf("%s: read the deploy lock: %w", d.Env, err)
	}
	if cur.Annotations[annLockJob] != strconv.FormatInt(h.Job, 10) {
		return nil
	}
	if err := d.Recover(ctx); err != nil {
		return err
	}
	return d.Unlock(ctx, h)
}

func ptr[T any](v T) *T { return &v }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// pullSecret creates or refreshes the image pull secret from the registry
// login.
func (d *Driver) pullSecret(ctx context.Context, l *kube.Login) error {
	auth := base64.StdEncoding.EncodeToString([]byte(l.Username + ":" + l.Password))
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{l.Server: map[string]string{"username": l.Username, "password": l.Password, "auth": auth}}})
	if err != nil {
		return err
	}
	secrets := d.Client.CoreV1().Secrets(d.Spec.Namespace)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: d.Spec.PullSecret, Labels: map[string]string{"app.kubernetes.io/managed-by": "berth"}},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: cfg},
	}
	_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	}
	if err != nil {
		// the error names the secret, never its content
		return failure.Systemf("%s: create or refresh the image pull secret %s in %s: %v", d.Env, d.Spec.PullSecret, d.Spec.Namespace, apierrors.ReasonForError(err))
	}
	return nil
}
