package rollout

// The kube driver against client-go's fake clientset, with a small stand-in
// for the deployment controller (reconcile) so that rollouts progress,
// complete, get stuck and are undone without a cluster (make unit). The
// same behaviours against a real control plane are in driver_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/kube"
	"github.com/berthci/berth/stages/driver"
)

var (
	deploymentsGVR = appsv1.SchemeGroupVersion.WithResource("deployments")
	replicaSetsGVR = appsv1.SchemeGroupVersion.WithResource("replicasets")
	podsGVR        = corev1.SchemeGroupVersion.WithResource("pods")
)

// cluster is a fake clientset whose Deployment "app" in namespace "apps"
// a fake controller rolls out: on each read of the Deployment it takes one
// step, as the real controller would between two polls. An image with
// "bad" in it never becomes available: its pod waits in ImagePullBackOff.
type cluster struct {
	cs    *fake.Clientset
	mu    sync.Mutex
	steps map[string]int // template hash → reads since it became current
	// down makes the API server not answer, as during a restart.
	down bool
}

func newCluster(t *testing.T, replicas int32) *cluster {
	t.Helper()
	labels := map[string]string{"app": "app"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "apps", UID: "dep-uid"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{
					{Name: "app", Image: repo + ":release-1.0.0"}, {Name: "sidecar", Image: "reg.example/proxy:1"}}}},
		},
	}
	c := &cluster{cs: fake.NewSimpleClientset(dep), steps: map[string]int{}}
	c.cs.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		c.mu.Lock()
		down := c.down
		c.mu.Unlock()
		if down {
			return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
		}
		if a.GetVerb() == "get" && a.GetResource() == deploymentsGVR {
			c.reconcile(t)
		}
		return false, nil, nil
	})
	return c
}

func (c *cluster) setDown(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = down
}

func templateHash(tpl corev1.PodTemplateSpec) string {
	b, _ := json.Marshal(tpl.Spec)
	h := fnv.New32a()
	_, _ = h.Write(b)
	return fmt.Sprintf("%x", h.Sum32())
}

// reconcile is one step of the deployment controller.
func (c *cluster) reconcile(t *testing.T) {
	tr := c.cs.Tracker()
	obj, err := tr.Get(deploymentsGVR, "apps", "app")
	if err != nil {
		return
	}
	dep := obj.(*appsv1.Deployment).DeepCopy()
	hash := templateHash(dep.Spec.Template)
	list, err := tr.List(replicaSetsGVR, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"), "apps")
	require.NoError(t, err)
	var cur *appsv1.ReplicaSet
	max := int64(0)
	for i := range list.(*appsv1.ReplicaSetList).Items {
		rs := &list.(*appsv1.ReplicaSetList).Items[i]
		max = maxInt(max, revision(rs))
		if rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey] == hash {
			cur = rs.DeepCopy()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur == nil || dep.Annotations[annRevision] != cur.Annotations[annRevision] {
		// a new template, or an old one back: it becomes the newest revision
		create := cur == nil
		if create {
			tpl := *dep.Spec.Template.DeepCopy()
			tpl.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
			cur = &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "app-" + hash, Namespace: "apps", Labels: tpl.Labels,
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(dep, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
				Spec: appsv1.ReplicaSetSpec{Template: tpl}}
		}
		cur.Annotations = map[string]string{}
		for k, v := range dep.Annotations {
			if k != annSwitch && k != annOwner {
				cur.Annotations[k] = v
			}
		}
		rev := strconv.FormatInt(max+1, 10)
		cur.Annotations[annRevision] = rev
		if create {
			require.NoError(t, tr.Create(replicaSetsGVR, cur, "apps"))
		} else {
			require.NoError(t, tr.Update(replicaSetsGVR, cur, "apps"))
		}
		if dep.Annotations == nil {
			dep.Annotations = map[string]string{}
		}
		dep.Annotations[annRevision] = rev
		c.steps[hash] = 0
		if strings.Contains(dep.Spec.Template.Spec.Containers[0].Image, "bad") {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app-" + hash + "-1", Namespace: "apps",
				Labels: map[string]string{"app": "app", appsv1.DefaultDeploymentUniqueLabelKey: hash}},
				Status: corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{Name: "app",
					State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "manifest unknown"}}}}}}
			_ = tr.Create(podsGVR, pod, "apps")
		}
	}
	c.steps[hash]++
	want := *dep.Spec.Replicas
	st := appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: want, UpdatedReplicas: want, ReadyReplicas: want, AvailableReplicas: want}
	switch {
	case strings.Contains(dep.Spec.Template.Spec.Containers[0].Image, "bad"):
		st = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: want + 1, UpdatedReplicas: 1, ReadyReplicas: want, AvailableReplicas: want}
	case c.steps[hash] == 1 && dep.Annotations[annRevision] != "1":
		st = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: want + 1, UpdatedReplicas: 1, ReadyReplicas: want, AvailableReplicas: want}
	}
	dep.Status = st
	require.NoError(t, tr.Update(deploymentsGVR, dep, "apps"))
}

// badRelease is a release whose image never becomes available (its digest
// says "bad" to the fake controller).
func badRelease(tag string, n int) driver.Release {
	r := release(tag, n)
	r.Digest = fmt.Sprintf("sha256:%061xbad", n)
	r.Image = repo + "@" + r.Digest
	return r
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func fakeDriver(t *testing.T, c *cluster) (*Driver, *bytes.Buffer) {
	var out bytes.Buffer
	return &Driver{Client: c.cs, Env: "alpha", Out: &out, Poll: time.Millisecond,
		Spec: settings.KubeSpec{Namespace: "apps", Deployment: "app", RolloutTimeout: settings.Duration(2 * time.Second),
			UnschedulableAfter: settings.Duration(time.Second)}}, &out
}

func (c *cluster) deployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	obj, err := c.cs.Tracker().Get(deploymentsGVR, "apps", "app")
	require.NoError(t, err)
	return obj.(*appsv1.Deployment)
}

func historyOf(t *testing.T, d *Driver) []string {
	t.Helper()
	hist, err := d.History(context.Background())
	require.NoError(t, err)
	var out []string
	for _, r := range hist {
		out = append(out, r.Tag+" "+r.Result)
	}
	return out
}

func TestFakeRolloutRecordsAndRollsBack(t *testing.T) {
	c := newCluster(t, 2)
	d, out := fakeDriver(t, c)
	ctx := context.Background()
	require.Nil(t, d.wait(ctx), "the Deployment as created rolls out")
	for i, tag := range []string{"release-1.0.1", "release-1.0.2"} {
		require.NoError(t, d.Deploy(ctx, release(tag, i+1), nil), out.String())
	}
	dep := c.deployment(t)
	assert.Equal(t, release("x", 2).Image, dep.Spec.Template.Spec.Containers[0].Image, "by digest")
	assert.Equal(t, "reg.example/proxy:1", dep.Spec.Template.Spec.Containers[1].Image, "the sidecar keeps its image")
	a := dep.Annotations
	assert.Equal(t, "release-1.0.2", a[driver.LabelTag])
	assert.Equal(t, "1002", a[driver.LabelJob])
	assert.Contains(t, a[annChangeCause], "berth: release-1.0.2")
	assert.NotContains(t, a, annSwitch, "the journal goes when the rollout completes")
	assert.Contains(t, out.String(), "1 of 2 updated, 2 ready, 2 available, 2 old still running")
	assert.Contains(t, out.String(), "rolled out in")
	assert.Equal(t, []string{"release-1.0.2 serving", "release-1.0.1 replaced", repo + ":release-1.0.0, reg.example/proxy:1 replaced"}, historyOf(t, d))

	require.NoError(t, d.Deploy(ctx, release("release-1.0.2", 2), nil))
	assert.Contains(t, out.String(), "already runs", "the same image: nothing to roll out")

	rec, err := d.Rollback(ctx, "", "bob")
	require.NoError(t, err)
	assert.Equal(t, "release-1.0.1", rec.Tag)
	assert.Equal(t, release("x", 1).Image, c.deployment(t).Spec.Template.Spec.Containers[0].Image)
	hist := historyOf(t, d)
	assert.Equal(t, "release-1.0.1 serving", hist[0])
	assert.Contains(t, hist, "release-1.0.2 rolled back by bob")

	rec, err = d.Rollback(ctx, "release-1.0.2", "bob")
	require.NoError(t, err)
	assert.Equal(t, "release-1.0.2", rec.Tag)

	_, err = d.Rollback(ctx, "release-9", "bob")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "has no release-9 to roll back to")
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))

	digest := fmt.Sprintf("sha256:%064x", 77)
	rec, err = d.Rollback(ctx, digest, "bob")
	require.NoError(t, err, "a digest no revision has is set")
	assert.Equal(t, digest, rec.Digest)
	assert.Equal(t, repo+"@"+digest, c.deployment(t).Spec.Template.Spec.Containers[0].Image)
}

func TestFakeRolloutThatCannotSucceedIsUndone(t *testing.T) {
	c := newCluster(t, 1)
	d, out := fakeDriver(t, c)
	ctx := context.Background()
	require.NoError(t, d.Deploy(ctx, release("release-1.0.1", 1), nil))
	bad := badRelease("release-1.0.2", 2)
	err := d.Deploy(ctx, bad, nil)
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "container app is ImagePullBackOff: manifest unknown")
	assert.Contains(t, err.Error(), "Pods of the new revision:")
	assert.Contains(t, err.Error(), "serves again")
	assert.Contains(t, out.String(), "the rollout cannot succeed")
	assert.Equal(t, release("x", 1).Image, c.deployment(t).Spec.Template.Spec.Containers[0].Image)
	hist := historyOf(t, d)
	assert.Equal(t, "release-1.0.1 serving", hist[0])
	assert.Contains(t, hist, "release-1.0.2 failed, previous restored")
	_, err = d.Rollback(ctx, "release-1.0.2", "bob")
	require.Error(t, err, "a failed revision never served")
}

func TestFakeCancelledRolloutIsUndone(t *testing.T) {
	c := newCluster(t, 1)
	d, _ := fakeDriver(t, c)
	require.NoError(t, d.Deploy(context.Background(), release("release-1.0.1", 1), nil))
	ctx, cancel := context.WithCancel(context.Background())
	d.Pause = func(_ context.Context, step string) {
		if step == "deploy:wait" {
			cancel()
		}
	}
	err := d.Deploy(ctx, release("release-1.0.2", 2), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cancelled")
	assert.Equal(t, release("x", 1).Image, c.deployment(t).Spec.Template.Spec.Containers[0].Image)
}

func TestFakeRecoverFinishesAKilledRollout(t *testing.T) {
	tests := []struct {
		name  string
		image string
		want  string
		said  string
	}{
		{"one that completes stays", "good", "good", "it completed"},
		{"one that cannot succeed is undone", "bad", "start", "undoing it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 1)
			d, out := fakeDriver(t, c)
			ctx := context.Background()
			start := release("start", 1)
			require.NoError(t, d.Deploy(ctx, start, nil))
			// what a berth killed after set-image leaves: the journal
			next := release(tt.image, 2)
			if tt.image == "bad" {
				next = badRelease(tt.image, 2)
			}
			require.NoError(t, d.update(ctx, func(dep *appsv1.Deployment) {
				dep.Spec.Template.Spec.Containers[0].Image = next.Image
				setAnnotations(&dep.ObjectMeta, driver.Labels("alpha", driver.EntryOf(next, "", "")))
				dep.Annotations[annSwitch] = dep.Annotations[annRevision]
			}))
			h := driver.Holder{Job: 5, Deadline: time.Now().Add(time.Hour)}
			require.NoError(t, d.Lock(ctx, h, time.Second))
			require.NoError(t, d.RecoverHeld(ctx, h))
			assert.Contains(t, out.String(), "a rollout by job 1002 did not finish")
			assert.Contains(t, out.String(), tt.said)
			hist := historyOf(t, d)
			assert.Equal(t, tt.want+" serving", hist[0])
			assert.NotContains(t, c.deployment(t).Annotations, annSwitch)
			_, err := c.cs.CoordinationV1().Leases("apps").Get(ctx, driver.LockName("alpha"), metav1.GetOptions{})
			assert.True(t, apierrors.IsNotFound(err), "the job's lease is released")
		})
	}
}

func TestFakeAPIServerOutageDuringARollout(t *testing.T) {
	c := newCluster(t, 1)
	d, out := fakeDriver(t, c)
	d.Spec.RolloutTimeout = settings.Duration(time.Minute)
	ctx := context.Background()
	require.NoError(t, d.Deploy(ctx, release("release-1.0.1", 1), nil))
	d.Pause = func(_ context.Context, step string) {
		if step == "deploy:wait" {
			c.setDown(true)
			time.AfterFunc(1200*time.Millisecond, func() { c.setDown(false) })
		}
	}
	require.NoError(t, d.Deploy(ctx, release("release-1.0.2", 2), nil))
	assert.Contains(t, out.String(), "the API server does not answer")
	assert.Contains(t, out.String(), "the API server answers again")
}

func TestFakeRefusals(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(*cluster, *Driver)
		wantErr string
		class   failure.Class
	}{
		{"no deployment", func(_ *cluster, d *Driver) { d.Spec.Deployment = "gone" }, "no deployment gone in namespace apps: create it first", failure.BuildFailure},
		{"managed by Argo CD", func(c *cluster, d *Driver) {
			dep := c.deployment(&testing.T{}).DeepCopy()
			dep.Labels = map[string]string{"argocd.argoproj.io/instance": "shop"}
			_ = c.cs.Tracker().Update(deploymentsGVR, dep, "apps")
		}, "is managed by Argo CD", failure.BuildFailure},
		{"no such container", func(_ *cluster, d *Driver) { d.Spec.Containers = []string{"web"} }, `has no container "web"`, failure.BuildFailure},
		{"no container of the repository", func(_ *cluster, d *Driver) {}, "no container of deployment app in namespace apps runs reg.example/other", failure.BuildFailure},
		{"the API server does not answer", func(c *cluster, _ *Driver) { c.setDown(true) }, "read deployment app", failure.SystemFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 1)
			d, _ := fakeDriver(t, c)
			tt.prepare(c, d)
			r := release("release-1.0.1", 1)
			if tt.name == "no container of the repository" {
				r.Image = "reg.example/other@" + r.Digest
			}
			err := d.Deploy(context.Background(), r, nil)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, tt.class, failure.ClassOf(err))
		})
	}
}

func TestFakeLease(t *testing.T) {
	c := newCluster(t, 1)
	d, out := fakeDriver(t, c)
	ctx := context.Background()
	alice := driver.Holder{Job: 1, Pipeline: 1, By: "alice", Deadline: time.Now().Add(time.Hour)}
	require.NoError(t, d.Lock(ctx, alice, time.Second))
	lease, err := c.cs.CoordinationV1().Leases("apps").Get(ctx, driver.LockName("alpha"), metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "job 1 of pipeline 1 (alice)", *lease.Spec.HolderIdentity)
	assert.Equal(t, alice.Job, driver.HolderOfLabels(lease.Annotations).Job)

	bob := driver.Holder{Job: 2, Pipeline: 2, By: "bob", Deadline: time.Now().Add(time.Hour)}
	err = d.Lock(ctx, bob, 50*time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "still locked by job 1 of pipeline 1 (alice)")
	require.NoError(t, d.Unlock(ctx, bob), "not bob's: left alone")
	_, err = c.cs.CoordinationV1().Leases("apps").Get(ctx, driver.LockName("alpha"), metav1.GetOptions{})
	require.NoError(t, err)

	// a holder that stopped renewing is taken over
	lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now().Add(-time.Hour)}
	_, err = c.cs.CoordinationV1().Leases("apps").Update(ctx, lease, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, d.Lock(ctx, bob, time.Second))
	assert.Contains(t, out.String(), "has not renewed it for")

	renewing, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { d.Renew(renewing, bob); close(done) }()
	stop()
	<-done
	require.NoError(t, d.Unlock(ctx, bob))
	_, err = c.cs.CoordinationV1().Leases("apps").Get(ctx, driver.LockName("alpha"), metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err))
}

func TestFakeStaleLease(t *testing.T) {
	now := time.Now()
	secs := int32(leaseSeconds)
	tests := []struct {
		name  string
		lease coordinationv1.Lease
		want  string
	}{
		{"fresh", coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: now}, LeaseDurationSeconds: &secs}}, ""},
		{"not renewed", coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{AcquireTime: &metav1.MicroTime{Time: now.Add(-time.Hour)}, LeaseDurationSeconds: &secs}}, "has not renewed it"},
		{"past its job's deadline", coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{driver.LabelLockDeadline: now.Add(-time.Minute).UTC().Format(time.RFC3339)}}}, "its job is over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := staleLease(&tt.lease)
			if tt.want == "" {
				assert.Empty(t, got)
			} else {
				assert.Contains(t, got, tt.want)
			}
		})
	}
}

func TestFakeOwnerAndPullSecret(t *testing.T) {
	c := newCluster(t, 1)
	d, _ := fakeDriver(t, c)
	ctx := context.Background()
	owner, err := d.Owner(ctx, "group/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner)
	owner, err = d.Owner(ctx, "other/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner, "the first claim stands")

	d.Spec.PullSecret = "regcred"
	login := &kube.Login{Server: "reg.example", Username: "deployer", Password: "pw-123"}
	require.NoError(t, d.Deploy(ctx, release("release-1.0.1", 1), login))
	require.NoError(t, d.Deploy(ctx, release("release-1.0.2", 2), login), "refreshed")
	s, err := c.cs.CoreV1().Secrets("apps").Get(ctx, "regcred", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Contains(t, string(s.Data[corev1.DockerConfigJsonKey]), `"username":"deployer"`)
	assert.Equal(t, "regcred", c.deployment(t).Spec.Template.Spec.ImagePullSecrets[0].Name)
}
