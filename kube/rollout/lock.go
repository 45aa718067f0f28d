package rollout

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/berthci/berth/stages/driver"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/kube"
)

// The deploy lock is a Lease in the workload's namespace, named like the
// engine lock, annotated with driver's lock labels. The holder renews it
// while it works (berth-kube's deploy and rollback do); one not renewed for
// leaseSeconds (a berth killed, a runner host gone), or past its job's
// deadline, is taken over.
const (
	leaseSeconds = 60
	// RenewEvery is how often a holder renews the Lease.
	RenewEvery = 10 * time.Second
)

func (d *Driver) leaseName() string { return driver.LockName(d.Env) }

// Lock waits, up to timeout, until this job holds the environment's Lease.
func (d *Driver) Lock(ctx context.Context, h driver.Holder, timeout time.Duration) error {
	leases := d.Client.CoordinationV1().Leases(d.Spec.Namespace)
	now := time.Now()
	secs := int32(leaseSeconds)
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: d.leaseName(), Annotations: driver.LockLabels(d.Env, d.Env, h, now)},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr(h.String()),
			LeaseDurationSeconds: &secs,
			AcquireTime:          &metav1.MicroTime{Time: now},
			RenewTime:            &metav1.MicroTime{Time: now},
		},
	}
	var seen string // the resource version a waiter saw stale
	return driver.WaitLock(ctx, driver.LockOps{
		Take: func(ctx context.Context) (bool, error) {
			_, err := leases.Create(ctx, lease, metav1.CreateOptions{})
			switch {
			case err == nil:
				return true, nil
			case apierrors.IsAlreadyExists(err):
				return false, nil
			default:
				return false, failure.Systemf("%s: take the deploy lock (Lease %s in %s): %w", d.Env, d.leaseName(), d.Spec.Namespace, err)
			}
		},
		Look: func(ctx context.Context) (driver.LockState, bool, error) {
			cur, err := leases.Get(ctx, d.leaseName(), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return driver.LockState{}, true, nil
			}
			if err != nil {
				return driver.LockState{}, false, failure.Systemf("%s: read the deploy lock: %w", d.Env, err)
			}
			seen = cur.ResourceVersion
			st := driver.LockState{Holder: deref(cur.Spec.HolderIdentity), Stale: staleLease(cur)}
			if cur.Spec.AcquireTime != nil {
				st.Since = cur.Spec.AcquireTime.UTC().Format(time.RFC3339)
			}
			return st, false, nil
		},
		// by resource version: a waiter that took it over first has made a new one
		TakeOver: func(ctx context.Context) (bool, error) {
			err := leases.Delete(ctx, d.leaseName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &seen}})
			return err == nil, nil
		},
	}, d.Out, d.Env, timeout)
}

// Unlock gives the Lease back if this job still holds it.
func (d *Driver) Unlock(ctx context.Context, h driver.Holder) error {
	leases := d.Client.CoordinationV1().Leases(d.Spec.Namespace)
	cur, err := leases.Get(ctx, d.leaseName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return failure.Systemf("%s: read the deploy lock: %w", d.Env, err)
	}
	if cur.Annotations[driver.LabelLockJob] != strconv.FormatInt(h.Job, 10) {
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
	if why := driver.HolderOfLabels(l.Annotations).Gone(time.Now()); why != "" {
		return why
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
func (d *Driver) Renew(ctx context.Context, h driver.Holder) {
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
		if err != nil || cur.Annotations[driver.LabelLockJob] != strconv.FormatInt(h.Job, 10) {
			continue
		}
		cur.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		_, _ = leases.Update(ctx, cur, metav1.UpdateOptions{})
	}
}

// RecoverHeld is Recover for job: when it still holds the Lease (killed
// mid-way), its rollout is put right and the Lease released.
func (d *Driver) RecoverHeld(ctx context.Context, h driver.Holder) error {
	cur, err := d.Client.CoordinationV1().Leases(d.Spec.Namespace).Get(ctx, d.leaseName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return failure.Systemf("%s: read the deploy lock: %w", d.Env, err)
	}
	if cur.Annotations[driver.LabelLockJob] != strconv.FormatInt(h.Job, 10) {
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
