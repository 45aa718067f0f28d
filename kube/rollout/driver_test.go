package rollout

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/berthci/berth/stages/driver"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/kube"
)

// realCluster is the control plane of .ci/kube.sh; it skips without one,
// or fails under BERTH_REQUIRE_KUBE=1.
func realCluster(t *testing.T) kubernetes.Interface {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no cluster tests")
	}
	path := os.Getenv("BERTH_KUBECONFIG")
	if path == "" {
		path = "/var/tmp/berth-kube/kubeconfig"
	}
	c, err := NewClient(settings.KubeSpec{Kubeconfig: path})
	if err == nil {
		_, err = c.Discovery().ServerVersion()
	}
	if err != nil {
		if os.Getenv("BERTH_REQUIRE_KUBE") == "1" {
			t.Fatalf("the test control plane is required: %v", err)
		}
		t.Skipf("no test control plane (run .ci/kube.sh up): %v", err)
	}
	return c
}

const repo = "127.0.0.1:5000/berth-test/app"

// fixture is a namespace with a Deployment of one container "app".
type fixture struct {
	c   kubernetes.Interface
	d   *Driver
	out *bytes.Buffer
	ns  string
}

func newFixture(t *testing.T, replicas int32, cpu string) *fixture {
	c := realCluster(t)
	ctx := context.Background()
	ns := fmt.Sprintf("berth-test-%d", time.Now().UnixNano()%1e9)
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		// the tests share one node: free its CPU before the next one starts
		ctx := context.Background()
		zero := int64(0)
		_ = c.AppsV1().Deployments(ns).Delete(ctx, "app", metav1.DeleteOptions{})
		_ = c.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		for i := 0; i < 100; i++ {
			if pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err != nil || len(pods.Items) == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	})
	require.Eventually(t, func() bool {
		_, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "the namespace's default service account")
	labels := map[string]string{"app": "app"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "app", Image: repo + ":release-1.0.0",
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}},
				}, {Name: "sidecar", Image: "127.0.0.1:5000/berth-test/proxy:1"}}},
			},
		},
	}
	_, err = c.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{})
	require.NoError(t, err)
	var out bytes.Buffer
	d := &Driver{Client: c, Env: "alpha", Out: &out, Poll: 100 * time.Millisecond,
		Spec: settings.KubeSpec{Namespace: ns, Deployment: "app", RolloutTimeout: settings.Duration(2 * time.Minute),
			UnschedulableAfter: settings.Duration(2 * time.Second)}}
	f := &fixture{c: c, d: d, out: &out, ns: ns}
	require.Nil(t, d.wait(ctx), "the Deployment as created rolls out")
	return f
}

// fillNode takes 20 of the node's 32 CPUs, so that a next revision of a
// 10-CPU Deployment has no room.
func (f *fixture) fillNode(t *testing.T) {
	_, err := f.c.CoreV1().Pods(f.ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "filler"},
		Spec: corev1.PodSpec{NodeName: "kwok-node-0", Containers: []corev1.Container{{Name: "f", Image: "filler",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("20")}}}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

func release(tag string, n int) driver.Release {
	digest := fmt.Sprintf("sha256:%064x", n)
	return driver.Release{Env: "alpha", Image: repo + "@" + digest, Digest: digest, Tag: tag, Ref: tag, Pipeline: int64(100 + n), Job: int64(1000 + n), By: "tester"}
}

func (f *fixture) deployment(t *testing.T) *appsv1.Deployment {
	dep, err := f.c.AppsV1().Deployments(f.ns).Get(context.Background(), "app", metav1.GetOptions{})
	require.NoError(t, err)
	return dep
}

func TestRolloutByDigestWithAnnotationsAndRollback(t *testing.T) {
	f := newFixture(t, 2, "100m")
	ctx := context.Background()

	first := release("release-1.0.0", 1)
	require.NoError(t, f.d.Deploy(ctx, first, nil), f.out.String())
	dep := f.deployment(t)
	assert.Equal(t, first.Image, dep.Spec.Template.Spec.Containers[0].Image, "set by digest")
	assert.Equal(t, "127.0.0.1:5000/berth-test/proxy:1", dep.Spec.Template.Spec.Containers[1].Image, "only the app's container")
	assert.Equal(t, int32(2), dep.Status.AvailableReplicas)
	a := dep.Annotations
	assert.Equal(t, first.Digest, a["berth.digest"])
	assert.Equal(t, "release-1.0.0", a["berth.tag"])
	assert.Equal(t, "release-1.0.0", a["berth.ref"])
	assert.Equal(t, "101", a["berth.pipeline"])
	assert.Equal(t, "1001", a[driver.LabelJob])
	assert.Contains(t, a["kubernetes.io/change-cause"], "berth: release-1.0.0 (sha256:000000000000) from release-1.0.0, pipeline 101, job 1001")
	assert.Contains(t, f.out.String(), "berth: alpha: 2 of 2 updated, 2 ready, 2 available")

	// the same tag pushed again with a new digest rolls out
	second := release("release-1.0.0", 2)
	require.NoError(t, f.d.Deploy(ctx, second, nil), f.out.String())
	assert.Equal(t, second.Image, f.deployment(t).Spec.Template.Spec.Containers[0].Image)

	hist, err := f.d.History(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(hist), 3)
	assert.Equal(t, "serving", hist[0].Result)
	assert.Equal(t, second.Digest, hist[0].Digest)
	assert.Equal(t, "replaced", hist[1].Result)
	assert.Equal(t, first.Digest, hist[1].Digest, "the ReplicaSet keeps the release's annotations")

	t0 := time.Now()
	rec, err := f.d.Rollback(ctx, "", "alice")
	require.NoError(t, err, f.out.String())
	assert.Less(t, time.Since(t0), 15*time.Second)
	assert.Equal(t, first.Digest, rec.Digest)
	assert.Equal(t, first.Image, f.deployment(t).Spec.Template.Spec.Containers[0].Image, "the previous digest again")
	hist, err = f.d.History(ctx)
	require.NoError(t, err)
	assert.Equal(t, first.Digest, hist[0].Digest)
	assert.Contains(t, fmt.Sprint(hist), "rolled back by alice")

	// and to a given digest
	_, err = f.d.Rollback(ctx, second.Digest, "bob")
	require.NoError(t, err)
	assert.Equal(t, second.Image, f.deployment(t).Spec.Template.Spec.Containers[0].Image)
	_, err = f.d.Rollback(ctx, "release-9.9.9", "bob")
	assert.ErrorContains(t, err, "no release-9.9.9 to roll back to")
}

// A rollout that can never become ready (no room for the new pod) is
// detected in seconds, undone, and reported with the pods' reasons.
func TestRolloutThatCannotSucceedIsUndoneFast(t *testing.T) {
	f := newFixture(t, 1, "10")
	ctx := context.Background()
	good := release("release-1.0.0", 1)
	require.NoError(t, f.d.Deploy(ctx, good, nil), f.out.String())
	f.fillNode(t)

	t0 := time.Now()
	err := f.d.Deploy(ctx, release("release-1.0.0", 2), nil)
	took := time.Since(t0)
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Less(t, took, 30*time.Second, "well before the 2m rollout timeout")
	assert.Contains(t, err.Error(), "unschedulable")
	assert.Contains(t, err.Error(), "Insufficient cpu", "the scheduler's reason")
	assert.Contains(t, err.Error(), "serves again")
	dep := f.deployment(t)
	assert.Equal(t, good.Image, dep.Spec.Template.Spec.Containers[0].Image, "undone")
	assert.Equal(t, int32(1), dep.Status.AvailableReplicas)
	hist, err := f.d.History(ctx)
	require.NoError(t, err)
	assert.Contains(t, fmt.Sprint(hist), "failed, previous restored")
	assert.Contains(t, f.out.String(), "undoing it")
}

// A cancelled job (SIGTERM to berth-kube) does not leave a half-done
// rollout: the previous version is put back.
func TestCancelledRolloutIsUndone(t *testing.T) {
	f := newFixture(t, 1, "10")
	f.d.Spec.UnschedulableAfter = settings.Duration(time.Hour) // only the cancel ends the wait
	good := release("release-1.0.0", 1)
	require.NoError(t, f.d.Deploy(context.Background(), good, nil))
	f.fillNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := f.d.Deploy(ctx, release("release-1.0.0", 2), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cancelled")
	assert.Equal(t, good.Image, f.deployment(t).Spec.Template.Spec.Containers[0].Image, "the previous version again")
}

func TestGitOpsManagedDeploymentIsRefused(t *testing.T) {
	f := newFixture(t, 1, "100m")
	ctx := context.Background()
	require.NoError(t, f.d.update(ctx, func(d *appsv1.Deployment) {
		d.Labels = map[string]string{"argocd.argoproj.io/instance": "shop"}
	}))
	err := f.d.Deploy(ctx, release("v1.0.0", 3), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "managed by Argo CD")
	assert.Contains(t, err.Error(), "in Git")
}

func TestLeaseIsTheEnvironmentsLock(t *testing.T) {
	f := newFixture(t, 1, "100m")
	ctx := context.Background()
	h := driver.Holder{Job: 1, Pipeline: 1, By: "a", Deadline: time.Now().Add(time.Hour)}
	require.NoError(t, f.d.Lock(ctx, h, time.Second))
	other := h
	other.Job = 2
	err := f.d.Lock(ctx, other, time.Second)
	assert.ErrorContains(t, err, "still locked by job 1 of pipeline 1 (a)")
	assert.Contains(t, f.out.String(), "waiting for alpha: job 1 of pipeline 1 (a) deploys it since")
	require.NoError(t, f.d.Unlock(ctx, h))
	require.NoError(t, f.d.Lock(ctx, other, time.Second))
	require.NoError(t, f.d.Unlock(ctx, other))

	// a crashed job's lease is taken over once its deadline passed
	crashed := driver.Holder{Job: 3, Pipeline: 3, By: "c", Deadline: time.Now().Add(time.Second)}
	require.NoError(t, f.d.Lock(ctx, crashed, time.Second))
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, f.d.Lock(ctx, other, 3*time.Second))
	assert.Contains(t, f.out.String(), "taking over the lock of alpha")
}

func TestPullSecretIsCreatedRefreshedAndUsed(t *testing.T) {
	f := newFixture(t, 1, "100m")
	ctx := context.Background()
	f.d.Spec.PullSecret = "berth-registry"
	login := &kube.Login{Server: "127.0.0.1:5000", Username: "ci", Password: "first"}
	require.NoError(t, f.d.Deploy(ctx, release("release-1.0.0", 5), login))
	login.Password = "second"
	require.NoError(t, f.d.Deploy(ctx, release("release-1.0.0", 6), login))
	s, err := f.c.CoreV1().Secrets(f.ns).Get(ctx, "berth-registry", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, corev1.SecretTypeDockerConfigJson, s.Type)
	assert.Contains(t, string(s.Data[corev1.DockerConfigJsonKey]), `"password":"second"`, "refreshed")
	assert.Equal(t, []corev1.LocalObjectReference{{Name: "berth-registry"}}, f.deployment(t).Spec.Template.Spec.ImagePullSecrets)
	assert.NotContains(t, f.out.String(), "second", "the password stays out of the job log")
}
