package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withKube needs the test control plane (.ci/kube.sh up) and builds
// berth-kube beside the berth under test.
func (r *rig) withKube(t *testing.T) (kubeconfig, kubectl string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(repoRoot(), ".ci", "kube.sh"), "env").Output()
	require.NoError(t, err)
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && k == "KUBECONFIG" {
			kubeconfig = v
		} else if ok && k == "KUBECTL" {
			kubectl = v
		}
	}
	if err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "get", "--raw", "/readyz").Run(); err != nil {
		if os.Getenv("BERTH_REQUIRE_KUBE") == "1" {
			t.Fatalf("the test control plane is required: run .ci/kube.sh up")
		}
		t.Skip("no test control plane (run .ci/kube.sh up)")
	}
	r.withHelper(t, "berth-kube")
	return kubeconfig, kubectl
}

// release-1.0.0 rolls out to alpha; the tag v1.0.0 is promoted, refused for
// prod without a manual job, and rolled out to prod by hand.
func TestE2EReleaseBranchAndTagOnKubernetes(t *testing.T) {
	r := needRig(t)
	kubeconfig, kubectl := r.withKube(t)
	kc := func(args ...string) string {
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return strings.TrimSpace(string(out))
	}
	name := fmt.Sprintf("berth-e2e-kube-%d", time.Now().UnixNano()%1e8)
	image := "127.0.0.1:5000/berth-e2e/" + name
	for _, ns := range []string{name + "-alpha", name + "-prod"} {
		kc("create", "namespace", ns)
		ns := ns
		t.Cleanup(func() {
			_ = exec.Command(kubectl, "--kubeconfig", kubeconfig, "delete", "namespace", ns, "--wait=false").Run()
		})
		require.Eventually(t, func() bool {
			return exec.Command(kubectl, "--kubeconfig", kubeconfig, "-n", ns, "get", "serviceaccount", "default").Run() == nil
		}, 30*time.Second, 200*time.Millisecond)
		kc("-n", ns, "create", "deployment", "app", "--image", image+":none", "--replicas", "2")
	}
	repo := newAppRepo(t)
	repo.commit("1.0.0")
	repo.git("checkout", "-qb", "release-1.0.0")
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = %[1]q

[environments.alpha]
driver = "kube"
[environments.alpha.kube]
kubeconfig = %[2]q
namespace = "%[3]s-alpha"
deployment = "app"
rollout_timeout = "1m"

[environments.prod]
driver = "kube"
manual = true
protected = true
[environments.prod.kube]
kubeconfig = %[2]q
namespace = "%[3]s-prod"
deployment = "app"
rollout_timeout = "1m"
`, image, kubeconfig, name))
	job := func(args ...string) (string, string) {
		t.Helper()
		res := r.runJob(t, toml, append([]string{"--repo", repo.dir, "--image", "busybox:local"}, args...)...)
		r.requireNothingLeft(t, res.JobID)
		return res.State, traceLines(res.Trace)
	}
	imageIn := func(ns string) string {
		return kc("-n", ns, "get", "deployment", "app", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
	}

	state, tr := job("--ref", "release-1.0.0", "--stage", "deploy")
	require.Equal(t, "success", state, tr)
	assert.Contains(t, tr, "berth: alpha: set image of "+name+" to "+image+"@sha256:") // kubectl names the container after the image
	assert.Contains(t, tr, "berth: alpha: 2 of 2 updated, 2 ready, 2 available")
	assert.Contains(t, tr, "berth: alpha: rolled out in ")
	alpha := imageIn(name + "-alpha")
	assert.Regexp(t, `@sha256:[0-9a-f]{64}$`, alpha)
	assert.Contains(t, kc("-n", name+"-alpha", "get", "deployment", "app", "-o", "jsonpath={.metadata.annotations.kubernetes\\.io/change-cause}"),
		"berth: release-1.0.0 (sha256:")

	repo.git("tag", "v1.0.0")
	state, tr = job("--tag", "v1.0.0", "--stage", "release")
	require.Equal(t, "success", state, tr)
	assert.Contains(t, tr, "promoted "+image+":release-1.0.0 to "+image+":v1.0.0, same digest")

	state, tr = job("--tag", "v1.0.0", "--stage", "deploy")
	assert.Equal(t, "failed", state)
	assert.Contains(t, tr, "environment prod deploys only from a manual job")
	assert.True(t, strings.HasSuffix(imageIn(name+"-prod"), ":none"), "prod untouched")

	state, tr = job("--tag", "v1.0.0", "--stage", "deploy", "--manual")
	require.Equal(t, "success", state, tr)
	assert.Equal(t, alpha, imageIn(name+"-prod"), "prod runs the digest tested on alpha")

	out, err := exec.Command(r.berth, "--config", toml, "history", "prod").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "v1.0.0")
	assert.Contains(t, string(out), "serving")
}

// The API server stops in the middle of a rollout and comes back: berth
// waits for it (the rollout goes on in the cluster) and the rollout
// completes; the lock is the job's throughout.
func TestE2EAPIServerStoppedDuringARollout(t *testing.T) {
	r := needRig(t)
	kubeconfig, kubectl := r.withKube(t)
	kc := func(args ...string) string {
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return strings.TrimSpace(string(out))
	}
	name := fmt.Sprintf("berth-e2e-apidown-%d", time.Now().UnixNano()%1e8)
	image := "127.0.0.1:5000/berth-e2e/" + name
	kc("create", "namespace", name)
	t.Cleanup(func() {
		_ = exec.Command(kubectl, "--kubeconfig", kubeconfig, "delete", "namespace", name, "--wait=false").Run()
	})
	require.Eventually(t, func() bool {
		return exec.Command(kubectl, "--kubeconfig", kubeconfig, "-n", name, "get", "serviceaccount", "default").Run() == nil
	}, 30*time.Second, 200*time.Millisecond)
	kc("-n", name, "create", "deployment", "app", "--image", image+":none", "--replicas", "2")
	repo := newAppRepo(t)
	repo.commit("1.0.0")
	repo.git("checkout", "-qb", "release-1.0.0")
	toml := writeTOML(t, defaultTOML+fmt.Sprintf(`
[registry]
image = %[1]q
[environments.alpha]
driver = "kube"
[environments.alpha.kube]
kubeconfig = %[2]q
namespace = %[3]q
deployment = "app"
rollout_timeout = "2m"
`, image, kubeconfig, name))
	kubeSh := filepath.Join(repoRoot(), ".ci", "kube.sh")
	t.Cleanup(func() { _ = exec.Command(kubeSh, "apiserver-start").Run() })

	env, file := pause(t, "deploy:wait")
	job := r.startJob(t, toml, env, nil, "--repo", repo.dir, "--ref", "release-1.0.0", "--stage", "deploy", "--image", "busybox:local")
	pausedPID(t, file)
	out, err := exec.Command(kubeSh, "apiserver-stop").CombinedOutput()
	require.NoError(t, err, string(out))
	require.NoError(t, os.Remove(file)) // the rollout wait goes on, against a stopped API server
	time.Sleep(5 * time.Second)
	out, err = exec.Command(kubeSh, "apiserver-start").CombinedOutput()
	require.NoError(t, err, string(out))
	res := job.finish(t)
	tr := traceLines(res.Trace)
	require.Equal(t, "success", res.State, tr)
	assert.Contains(t, tr, "the API server does not answer")
	assert.Contains(t, tr, "the API server answers again after")
	assert.Contains(t, tr, "berth: alpha: rolled out in ")
	assert.Regexp(t, `@sha256:[0-9a-f]{64}$`, kc("-n", name, "get", "deployment", "app", "-o", "jsonpath={.spec.template.spec.containers[0].image}"))
	assert.Empty(t, kc("-n", name, "get", "deployment", "app", "-o", "jsonpath={.metadata.annotations.berth\\.switch}"), "no unfinished switch")
	r.requireNothingLeft(t, res.JobID)
}
