package rollout

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/berthci/berth/executor/settings"
)

// The kwok node of the test control plane runs no container, so the states
// of a real kubelet are checked here on the API objects alone.
func TestStuckReasons(t *testing.T) {
	waiting := func(reason string) corev1.PodStatus {
		return corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "app",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: "details"}}}}}
	}
	for _, tc := range []struct {
		status corev1.PodStatus
		want   string
	}{
		{waiting("ErrImagePull"), "container app is ErrImagePull: details"},
		{waiting("ImagePullBackOff"), "ImagePullBackOff"},
		{waiting("CrashLoopBackOff"), "CrashLoopBackOff"},
		{waiting("CreateContainerConfigError"), "CreateContainerConfigError"},
		{waiting("ContainerCreating"), ""},
		{corev1.PodStatus{}, ""},
	} {
		dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", UID: "dep-uid",
			Annotations: map[string]string{annRevision: "2"}},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app"}}}}
		rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "app-abc", Namespace: "ns",
			Labels:          map[string]string{"app": "app", appsv1.DefaultDeploymentUniqueLabelKey: "abc"},
			Annotations:     map[string]string{annRevision: "2"},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(dep, appsv1.SchemeGroupVersion.WithKind("Deployment"))}}}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app-abc-1", Namespace: "ns",
			Labels: map[string]string{"app": "app", appsv1.DefaultDeploymentUniqueLabelKey: "abc"}}, Status: tc.status}
		d := &Driver{Client: fake.NewSimpleClientset(dep, rs, pod), Env: "alpha", Out: io.Discard,
			Spec: settings.KubeSpec{Namespace: "ns", Deployment: "app"}}
		got := d.stuck(context.Background(), dep, map[string]time.Time{})
		if tc.want == "" {
			assert.Empty(t, got)
		} else {
			assert.Contains(t, got, tc.want)
		}
	}
}
