package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/stages/driver"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/kube/rollout"
)

// The kube benchmark of issue 5: a rollout that can never succeed (no room
// for the new pod), how long until it is known, and how long until the
// previous version is back. The script way is `kubectl set image` +
// `kubectl rollout status --timeout`, then `kubectl rollout undo`.

const scriptRolloutTimeout = "30s"

type cluster struct {
	c                   kubernetes.Interface
	kubeconfig, kubectl string
}

func kubeCluster(b *testing.B) cluster {
	out, err := exec.Command(filepath.Join(here(), "..", ".ci", "kube.sh"), "env").Output()
	must(b, err)
	var k cluster
	for _, l := range strings.Split(string(out), "\n") {
		if key, v, ok := strings.Cut(l, "="); ok && key == "KUBECONFIG" {
			k.kubeconfig = v
		} else if ok && key == "KUBECTL" {
			k.kubectl = v
		}
	}
	cs, err := rollout.NewClient(settings.KubeSpec{Kubeconfig: k.kubeconfig})
	if err == nil {
		_, err = cs.Discovery().ServerVersion()
	}
	if err != nil {
		b.Skipf("no test control plane (run .ci/kube.sh up): %v", err)
	}
	k.c = cs
	return k
}

// stuckNamespace is a Deployment of one pod that fills most of the node,
// rolled out once, and a filler pod: the next revision's pod has no room.
func (k cluster) stuckNamespace(b *testing.B, name string) string {
	ctx := context.Background()
	ns := fmt.Sprintf("bench-%s-%d", name, time.Now().UnixNano()%1e8)
	_, err := k.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(b, err)
	b.Cleanup(func() {
		// the two sides share one node: free its CPU for the other
		ctx := context.Background()
		zero := int64(0)
		_ = k.c.AppsV1().Deployments(ns).Delete(ctx, "app", metav1.DeleteOptions{})
		_ = k.c.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		for i := 0; i < 100; i++ {
			if pods, err := k.c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err != nil || len(pods.Items) == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = k.c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	})
	for i := 0; ; i++ {
		if _, err := k.c.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		if i > 300 {
			b.Fatal("no default service account")
		}
		time.Sleep(100 * time.Millisecond)
	}
	one := int32(1)
	cpu := func(n string) corev1.ResourceRequirements {
		return corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(n)}}
	}
	labels := map[string]string{"app": "app"}
	_, err = k.c.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: benchRepo + ":good", Resources: cpu("10")}}}}},
	}, metav1.CreateOptions{})
	must(b, err)
	k.run(b, ns, "rollout", "status", "deployment/app", "--timeout=60s")
	_, err = k.c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "filler"},
		Spec: corev1.PodSpec{NodeName: "kwok-node-0", Containers: []corev1.Container{{Name: "f", Image: "filler", Resources: cpu("20")}}}}, metav1.CreateOptions{})
	must(b, err)
	return ns
}

func (k cluster) run(b *testing.B, ns string, args ...string) error {
	out, err := exec.Command(k.kubectl, append([]string{"--kubeconfig", k.kubeconfig, "-n", ns}, args...)...).CombinedOutput()
	if err != nil && !strings.Contains(strings.Join(args, " "), "status") {
		b.Fatalf("kubectl %v: %v: %s", args, err, out)
	}
	return err
}

// stamped remembers when a line containing mark was written.
type stamped struct {
	mu   sync.Mutex
	mark string
	buf  bytes.Buffer
	at   time.Time
}

func (s *stamped) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() && bytes.Contains(p, []byte(s.mark)) {
		s.at = time.Now()
	}
	return s.buf.Write(p)
}

// BenchmarkKubeFailedRollout: detect-ms until the rollout is known to fail,
// rollback-ms until the previous version is available again.
func BenchmarkKubeFailedRollout(b *testing.B) {
	k := kubeCluster(b)
	ctx := context.Background()
	b.Run("berth", func(b *testing.B) {
		ns := k.stuckNamespace(b, "berth")
		var detect, back []float64
		for i := 0; i < b.N; i++ {
			out := &stamped{mark: "undoing it"}
			d := &rollout.Driver{Client: k.c, Env: "alpha", Out: out,
				Spec: settings.KubeSpec{Namespace: ns, Deployment: "app", RolloutTimeout: settings.Duration(5 * time.Minute)}}
			digest := fmt.Sprintf("sha256:%064x", time.Now().UnixNano())
			t0 := time.Now()
			err := d.Deploy(ctx, driver.Release{Env: "alpha", Image: benchRepo + "@" + digest, Digest: digest, Tag: "bad", By: "bench"}, nil)
			end := time.Now()
			if err == nil || out.at.IsZero() {
				b.Fatalf("the rollout should have failed and been undone: %v\n%s", err, out.buf.String())
			}
			detect = append(detect, float64(out.at.Sub(t0).Milliseconds()))
			back = append(back, float64(end.Sub(out.at).Milliseconds()))
		}
		b.ReportMetric(medianOf(detect), "detect-ms")
		b.ReportMetric(medianOf(back), "rollback-ms")
	})
	b.Run("bash", func(b *testing.B) {
		ns := k.stuckNamespace(b, "bash")
		var detect, back []float64
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			k.run(b, ns, "set", "image", "deployment/app", fmt.Sprintf("app=%s:bad-%d", benchRepo, i))
			if k.run(b, ns, "rollout", "status", "deployment/app", "--timeout="+scriptRolloutTimeout) == nil {
				b.Fatal("the script's rollout should have failed")
			}
			t1 := time.Now()
			k.run(b, ns, "rollout", "undo", "deployment/app")
			if err := k.run(b, ns, "rollout", "status", "deployment/app", "--timeout=120s"); err != nil {
				b.Fatalf("undo did not complete: %v", err)
			}
			detect = append(detect, float64(t1.Sub(t0).Milliseconds()))
			back = append(back, float64(time.Since(t1).Milliseconds()))
		}
		b.ReportMetric(medianOf(detect), "detect-ms")
		b.ReportMetric(medianOf(back), "rollback-ms")
	})
}
