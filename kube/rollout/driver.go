// Package rollout is the kube driver proper, on client-go: set image by
// digest, wait with `kubectl rollout status` semantics, detect within
// seconds a rollout that cannot succeed and undo it, history from the
// ReplicaSets, a Lease as the lock. berth-kube runs it; see package kube.
package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/stages/driver"

	"github.com/distribution/reference"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/kube"
)

// Annotations on the Deployment, which the deployment controller copies to
// the ReplicaSet of each revision: the history lives there. What a release
// is goes in driver's labels (driver.Labels).
const (
	annResult = "berth.result" // on a ReplicaSet that failed or was rolled back from
	// annSwitch, on the Deployment while berth rolls out, is the revision
	// to go back to: a berth killed mid-way leaves it for Recover.
	annSwitch      = "berth.switch"
	annChangeCause = "kubernetes.io/change-cause"
	annRevision    = "deployment.kubernetes.io/revision"
)

// Driver is one kube environment.
type Driver struct {
	Client kubernetes.Interface
	Env    string
	Spec   settings.KubeSpec
	Out    io.Writer
	// Poll is how often a rollout is looked at.
	Poll time.Duration
	// Pause is called before each step ("deploy:wait"): the test rig's
	// fault injection. nil does nothing.
	Pause func(ctx context.Context, step string)
}

// apiOutageWait is how long a rollout waits for an API server that
// stopped answering.
const apiOutageWait = 45 * time.Second

func (d *Driver) poll() time.Duration {
	if d.Poll == 0 {
		return 100 * time.Millisecond
	}
	return d.Poll
}

func (d *Driver) stuckAfter() time.Duration {
	if d.Spec.UnschedulableAfter != 0 {
		return d.Spec.UnschedulableAfter.D()
	}
	return 5 * time.Second
}

func (d *Driver) say(format string, args ...any) {
	joblog.Step(d.Out, "%s: %s", d.Env, fmt.Sprintf(format, args...))
}

func (d *Driver) where() string {
	return fmt.Sprintf("deployment %s in namespace %s", d.Spec.Deployment, d.Spec.Namespace)
}

// deployment reads the workload and refuses one that a GitOps controller
// owns: it would put the old image back.
func (d *Driver) deployment(ctx context.Context) (*appsv1.Deployment, error) {
	dep, err := d.Client.AppsV1().Deployments(d.Spec.Namespace).Get(ctx, d.Spec.Deployment, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, failure.Buildf("%s: no %s: create it first (berth rolls out images, it does not create workloads), or set environments.%s.kube.deployment", d.Env, d.where(), d.Env)
	}
	if err != nil {
		return nil, failure.Systemf("%s: read %s: %w", d.Env, d.where(), err)
	}
	if who, key := gitOpsOwner(dep.ObjectMeta); who != "" {
		return nil, failure.Buildf("%s: %s is managed by %s (%s): a set image would be reverted by it; change the image in Git instead", d.Env, d.where(), who, key)
	}
	return dep, nil
}

// gitOpsOwner names the GitOps controller that manages an object, if any.
func gitOpsOwner(m metav1.ObjectMeta) (who, key string) {
	for _, k := range []string{"argocd.argoproj.io/instance", "argocd.argoproj.io/tracking-id"} {
		if m.Labels[k] != "" || m.Annotations[k] != "" {
			return "Argo CD", k
		}
	}
	for _, k := range []string{"kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name"} {
		if m.Labels[k] != "" || m.Annotations[k] != "" {
			return "Flux", k
		}
	}
	return "", ""
}

// containers are the ones that take the release's image.
func (d *Driver) containers(dep *appsv1.Deployment, image string) ([]string, error) {
	if len(d.Spec.Containers) > 0 {
		for _, want := range d.Spec.Containers {
			if indexOf(dep.Spec.Template.Spec.Containers, want) < 0 {
				return nil, failure.Buildf("%s: %s has no container %q: check environments.%s.kube.containers", d.Env, d.where(), want, d.Env)
			}
		}
		return d.Spec.Containers, nil
	}
	repo := repository(image)
	var out []string
	for _, c := range dep.Spec.Template.Spec.Containers {
		if repository(c.Image) == repo {
			out = append(out, c.Name)
		}
	}
	if len(out) == 0 {
		return nil, failure.Buildf("%s: no container of %s runs %s: name the ones that take it in environments.%s.kube.containers", d.Env, d.where(), repo, d.Env)
	}
	return out, nil
}

func indexOf(cs []corev1.Container, name string) int {
	for i, c := range cs {
		if c.Name == name {
			return i
		}
	}
	return -1
}

func repository(image string) string {
	n, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return image
	}
	return n.Name()
}

// Deploy sets the image by digest, records the release in annotations and
// waits for the rollout; one that cannot succeed is undone.
func (d *Driver) Deploy(ctx context.Context, r driver.Release, login *kube.Login) error {
	dep, err := d.deployment(ctx)
	if err != nil {
		return err
	}
	names, err := d.containers(dep, r.Image)
	if err != nil {
		return err
	}
	if login != nil && d.Spec.PullSecret != "" {
		if err := d.pullSecret(ctx, login); err != nil {
			return err
		}
	}
	same := true
	for _, n := range names {
		same = same && dep.Spec.Template.Spec.Containers[indexOf(dep.Spec.Template.Spec.Containers, n)].Image == r.Image
	}
	if same {
		d.say("%s already runs %s: nothing to roll out", d.where(), r.Image)
		return nil
	}
	prev := dep.Annotations[annRevision]
	cause := fmt.Sprintf("berth: %s (%s) from %s, pipeline %d, job %d, by %s", r.Tag, shortDigest(r.Digest), r.Ref, r.Pipeline, r.Job, r.By)
	if d.Pause != nil {
		d.Pause(ctx, "deploy:set-image")
	}
	err = d.update(ctx, func(dep *appsv1.Deployment) {
		for _, n := range names {
			dep.Spec.Template.Spec.Containers[indexOf(dep.Spec.Template.Spec.Containers, n)].Image = r.Image
		}
		if d.Spec.PullSecret != "" && !hasPullSecret(dep, d.Spec.PullSecret) {
			dep.Spec.Template.Spec.ImagePullSecrets = append(dep.Spec.Template.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: d.Spec.PullSecret})
		}
		ann := driver.Labels(d.Env, driver.EntryOf(r, "", ""))
		ann[annChangeCause] = cause
		ann[annSwitch] = prev // the journal: what to go back to if berth dies mid-way
		setAnnotations(&dep.ObjectMeta, ann)
	})
	if err != nil {
		return err
	}
	d.say("set image of %s to %s", strings.Join(names, ", "), r.Image)
	if d.Pause != nil {
		d.Pause(ctx, "deploy:wait")
	}
	t := time.Now()
	stuck := d.wait(ctx)
	if stuck == nil {
		d.say("rolled out in %s", time.Since(t).Round(time.Millisecond))
		return d.clearSwitch(ctx)
	}
	if stuck.outage {
		return failure.Systemf("%s: the Kubernetes API server stopped answering during the rollout of %s (%s): the rollout goes on in the cluster; the next deploy, berth rollback %s or this job's cleanup checks it and undoes it if it cannot succeed", d.Env, r.Tag, stuck.reason, d.Env)
	}
	d.say("the rollout cannot succeed (%s, after %s): undoing it", stuck.reason, time.Since(t).Round(time.Millisecond))
	if prev == "" {
		return failure.Buildf("%s: the rollout of %s failed: %s%s\nThere was no earlier revision to go back to.", d.Env, r.Tag, stuck.reason, stuck.details)
	}
	back, err := d.undo(context.WithoutCancel(ctx), prev, "failed") // a cancelled job too leaves the old version serving
	if err != nil {
		return failure.Systemf("%s: the rollout of %s failed (%s), and undoing it failed too: %v", d.Env, r.Tag, stuck.reason, err)
	}
	return failure.Buildf("%s: the rollout of %s failed: %s%s\nUndone: revision %s (%s) serves again.", d.Env, r.Tag, stuck.reason, stuck.details, back.revision, back.image)
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func hasPullSecret(dep *appsv1.Deployment, name string) bool {
	for _, s := range dep.Spec.Template.Spec.ImagePullSecrets {
		if s.Name == name {
			return true
		}
	}
	return false
}

func setAnnotations(m *metav1.ObjectMeta, ann map[string]string) {
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	for k, v := range ann {
		m.Annotations[k] = v
	}
}

// update changes the Deployment, retried on conflicts.
func (d *Driver) update(ctx context.Context, change func(*appsv1.Deployment)) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		dep, err := d.Client.AppsV1().Deployments(d.Spec.Namespace).Get(ctx, d.Spec.Deployment, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(dep)
		_, err = d.Client.AppsV1().Deployments(d.Spec.Namespace).Update(ctx, dep, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return failure.Systemf("%s: update %s: %w", d.Env, d.where(), err)
	}
	return nil
}

// revisions are the Deployment's ReplicaSets, newest revision first.
func (d *Driver) revisions(ctx context.Context, dep *appsv1.Deployment) ([]appsv1.ReplicaSet, error) {
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil {
		return nil, failure.Systemf("%s: selector of %s: %w", d.Env, d.where(), err)
	}
	list, err := d.Client.AppsV1().ReplicaSets(d.Spec.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, failure.Systemf("%s: list the ReplicaSets of %s: %w", d.Env, d.where(), err)
	}
	var out []appsv1.ReplicaSet
	for _, rs := range list.Items {
		if metav1.IsControlledBy(&rs, dep) {
			out = append(out, rs)
		}
	}
	sort.Slice(out, func(i, k int) bool { return revision(&out[i]) > revision(&out[k]) })
	return out, nil
}

func revision(rs *appsv1.ReplicaSet) int64 {
	n, _ := strconv.ParseInt(rs.Annotations[annRevision], 10, 64)
	return n
}

// undone is where an undo or rollback went.
type undone struct{ revision, image string }

// undo puts the template of revision rev back, as `kubectl rollout undo
// --to-revision` does, marks the revision it leaves with result, and waits
// until the old version is available again.
func (d *Driver) undo(ctx context.Context, rev, result string) (undone, error) {
	dep, err := d.deployment(ctx)
	if err != nil {
		return undone{}, err
	}
	revs, err := d.revisions(ctx, dep)
	if err != nil {
		return undone{}, err
	}
	var target, leaving *appsv1.ReplicaSet
	for i := range revs {
		switch revs[i].Annotations[annRevision] {
		case rev:
			target = &revs[i]
		case dep.Annotations[annRevision]:
			leaving = &revs[i]
		}
	}
	if target == nil {
		return undone{}, fmt.Errorf("revision %s of %s is gone (revisionHistoryLimit)", rev, d.where())
	}
	return d.restore(ctx, target, leaving, result)
}

// undoTimeout bounds putting a revision back: a cancelled job does not cut
// it short, and it does not wait forever either.
func (d *Driver) undoTimeout() time.Duration { return d.Spec.RolloutTimeout.D() + time.Minute }

// restore makes target's template the Deployment's again and waits.
func (d *Driver) restore(ctx context.Context, target, leaving *appsv1.ReplicaSet, result string) (undone, error) {
	// the service must be back even if the job is cancelled
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.undoTimeout())
	defer cancel()
	err := d.update(ctx, func(dep *appsv1.Deployment) {
		tpl := target.Spec.Template.DeepCopy()
		delete(tpl.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
		dep.Spec.Template = *tpl
		ann := map[string]string{}
		for _, k := range append(driver.LabelKeys(), annChangeCause) {
			ann[k] = target.Annotations[k]
		}
		setAnnotations(&dep.ObjectMeta, ann)
		delete(dep.Annotations, annSwitch)
	})
	if err != nil {
		return undone{}, err
	}
	to := undone{revision: target.Annotations[annRevision], image: imagesOf(&target.Spec.Template)}
	f := d.wait(ctx)
	if leaving != nil && result != "" { // for the history; a merge patch cannot conflict
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{annResult: result}}})
		_, _ = d.Client.AppsV1().ReplicaSets(d.Spec.Namespace).Patch(ctx, leaving.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if f != nil {
		return to, fmt.Errorf("revision %s does not come back either: %s%s", to.revision, f.reason, f.details)
	}
	return to, nil
}

func imagesOf(t *corev1.PodTemplateSpec) string {
	var out []string
	for _, c := range t.Spec.Containers {
		out = append(out, c.Image)
	}
	return strings.Join(out, ", ")
}

// stuckRollout is why a rollout cannot succeed, with the pods' events; or,
// with outage, that the API server stopped answering.
type stuckRollout struct {
	reason  string
	details string
	outage  bool
}

// stuckReasons are container states that a rollout does not recover from
// by waiting.
var stuckReasons = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "CrashLoopBackOff": true,
	"CreateContainerConfigError": true, "InvalidImageName": true, "CreateContainerError": true,
}

// wait follows the rollout like `kubectl rollout status`, printing replica
// counts as they change, until it is complete, or cannot succeed: a new pod
// stuck in a state that waiting does not fix, a pod unschedulable for
// StuckAfter, ProgressDeadlineExceeded, or the rollout timeout.
func (d *Driver) wait(ctx context.Context) *stuckRollout {
	deadline := time.Now().Add(d.Spec.RolloutTimeout.D())
	unschedulableSince := map[string]time.Time{}
	last := ""
	var down time.Time // since when the API server does not answer
	for {
		dep, err := d.Client.AppsV1().Deployments(d.Spec.Namespace).Get(ctx, d.Spec.Deployment, metav1.GetOptions{})
		if err != nil && ctx.Err() == nil && failure.IsOutage(err) {
			// an API server that restarts: the rollout goes on in the
			// cluster, so wait for it to answer again, a while
			if down.IsZero() {
				down = time.Now()
				d.say("the API server does not answer (%v): retrying for %s", err, apiOutageWait)
			}
			if time.Since(down) > apiOutageWait {
				return &stuckRollout{reason: "reading " + d.where() + ": " + err.Error(), outage: true}
			}
			time.Sleep(time.Second)
			continue
		}
		if err != nil && ctx.Err() != nil {
			return &stuckRollout{reason: "cancelled"} // the job's cancel cut the read short
		}
		if err != nil {
			return &stuckRollout{reason: "reading " + d.where() + ": " + err.Error()}
		}
		if !down.IsZero() {
			d.say("the API server answers again after %s", time.Since(down).Round(time.Second))
			down = time.Time{}
		}
		if dep.Status.ObservedGeneration >= dep.Generation {
			want := int32(1)
			if dep.Spec.Replicas != nil {
				want = *dep.Spec.Replicas
			}
			st := dep.Status
			line := fmt.Sprintf("%d of %d updated, %d ready, %d available", st.UpdatedReplicas, want, st.ReadyReplicas, st.AvailableReplicas)
			if old := st.Replicas - st.UpdatedReplicas; old > 0 {
				line += fmt.Sprintf(", %d old still running", old)
			}
			if line != last {
				d.say("%s", line)
				last = line
			}
			for _, c := range st.Conditions {
				if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
					return d.failed(ctx, dep, "ProgressDeadlineExceeded: "+c.Message)
				}
			}
			if st.UpdatedReplicas == want && st.Replicas == st.UpdatedReplicas && st.AvailableReplicas == st.UpdatedReplicas {
				return nil
			}
			if why := d.stuck(ctx, dep, unschedulableSince); why != "" {
				return d.failed(ctx, dep, why)
			}
		}
		if time.Now().After(deadline) {
			return d.failed(ctx, dep, fmt.Sprintf("not complete after rollout_timeout %s", d.Spec.RolloutTimeout.D()))
		}
		select {
		case <-ctx.Done():
			return &stuckRollout{reason: "cancelled"}
		case <-time.After(d.poll()):
		}
	}
}

// newPods are the pods of the Deployment's current revision.
func (d *Driver) newPods(ctx context.Context, dep *appsv1.Deployment) ([]corev1.Pod, error) {
	revs, err := d.revisions(ctx, dep)
	if err != nil {
		return nil, err
	}
	for _, rs := range revs {
		if rs.Annotations[annRevision] != dep.Annotations[annRevision] {
			continue
		}
		sel := labels.SelectorFromSet(labels.Set{appsv1.DefaultDeploymentUniqueLabelKey: rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey]})
		list, err := d.Client.CoreV1().Pods(d.Spec.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return nil, err
		}
		return list.Items, nil
	}
	return nil, nil
}

// stuck says why a new pod cannot become ready, if it cannot.
func (d *Driver) stuck(ctx context.Context, dep *appsv1.Deployment, unschedulableSince map[string]time.Time) string {
	pods, err := d.newPods(ctx, dep)
	if err != nil {
		return ""
	}
	for _, p := range pods {
		for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			if w := cs.State.Waiting; w != nil && stuckReasons[w.Reason] {
				return fmt.Sprintf("pod %s: container %s is %s: %s", p.Name, cs.Name, w.Reason, w.Message)
			}
		}
		for _, c := range p.Status.Conditions {
			if c.Type != corev1.PodScheduled || c.Status != corev1.ConditionFalse || c.Reason != corev1.PodReasonUnschedulable {
				continue
			}
			since, seen := unschedulableSince[p.Name]
			if !seen {
				unschedulableSince[p.Name] = time.Now()
			} else if time.Since(since) >= d.stuckAfter() {
				return fmt.Sprintf("pod %s is unschedulable: %s", p.Name, c.Message)
			}
		}
	}
	return ""
}

// failed gathers the new pods' reasons and events for the job log.
func (d *Driver) failed(ctx context.Context, dep *appsv1.Deployment, reason string) *stuckRollout {
	f := &stuckRollout{reason: reason}
	pods, err := d.newPods(context.WithoutCancel(ctx), dep)
	if err != nil || len(pods) == 0 {
		return f
	}
	var b strings.Builder
	b.WriteString("\nPods of the new revision:")
	for _, p := range pods {
		fmt.Fprintf(&b, "\n  %s: %s", p.Name, p.Status.Phase)
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue && c.Reason != "" {
				fmt.Fprintf(&b, ", %s=%s (%s)", c.Type, c.Reason, c.Message)
			}
		}
		evs, err := d.Client.CoreV1().Events(d.Spec.Namespace).List(context.WithoutCancel(ctx), metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
		if err != nil {
			continue
		}
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "\n    event %s %s: %s", e.Type, e.Reason, strings.TrimSpace(e.Message))
		}
	}
	f.details = b.String()
	return f
}

// annOwner records, on the Deployment, the project that owns the
// environment when berth.toml names none: the first one that deployed it.
const annOwner = "berth.owner"

// Owner is the environment's owner; claim records it when there is none.
func (d *Driver) Owner(ctx context.Context, claim string) (string, error) {
	dep, err := d.deployment(ctx)
	if err != nil {
		return "", err
	}
	if o := dep.Annotations[annOwner]; o != "" || claim == "" {
		return o, nil
	}
	owner := claim
	err = d.update(ctx, func(dep *appsv1.Deployment) {
		if o := dep.Annotations[annOwner]; o != "" { // claimed meanwhile
			owner = o
			return
		}
		setAnnotations(&dep.ObjectMeta, map[string]string{annOwner: claim})
	})
	return owner, err
}

// clearSwitch removes the journal annotation once a rollout ended.
func (d *Driver) clearSwitch(ctx context.Context) error {
	return d.update(context.WithoutCancel(ctx), func(dep *appsv1.Deployment) { delete(dep.Annotations, annSwitch) })
}

// Recover finishes a rollout that a killed berth left: one that completes
// stays, one that cannot succeed is undone to the revision before it.
func (d *Driver) Recover(ctx context.Context) error {
	dep, err := d.deployment(ctx)
	if err != nil {
		return err
	}
	prev, ok := dep.Annotations[annSwitch]
	if !ok {
		return nil
	}
	d.say("a rollout by job %d did not finish: checking it first", driver.EntryOfLabels(dep.Annotations, "").Job)
	f := d.wait(ctx)
	switch {
	case f == nil:
		d.say("it completed: revision %s serves", dep.Annotations[annRevision])
		return d.clearSwitch(ctx)
	case f.outage:
		return failure.Systemf("%s: the API server does not answer: %s", d.Env, f.reason)
	case prev == "":
		d.say("it cannot succeed (%s), and there is no earlier revision", f.reason)
		return d.clearSwitch(ctx)
	}
	d.say("it cannot succeed (%s): undoing it", f.reason)
	back, err := d.undo(ctx, prev, "interrupted")
	if err != nil {
		return failure.Systemf("%s: undo the interrupted rollout: %v", d.Env, err)
	}
	d.say("revision %s (%s) serves again", back.revision, back.image)
	return nil
}
