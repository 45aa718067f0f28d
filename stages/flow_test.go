package stages

// The stage logic (Native: build, push, promote, deploy, rollback) end to
// end without an engine or a cluster: a fake image engine that pushes real
// images to go-containerregistry's in-memory registry, and the file driver
// (filedriver_test.go) as every environment. The real engine, registry
// and runner do the same in cmd/berth's tests.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
)

// fakeImages builds by reading the context (a Dockerfile with FAIL in it
// fails at its second step) and pushes a small random image carrying the
// build's labels to a real registry.
type fakeImages struct {
	mu     sync.Mutex
	labels map[string]map[string]string // tag → labels of its build
	builds int
	// pushErr, when set, is what the engine reports for each push.
	pushErr string
}

func (f *fakeImages) ImageBuild(_ context.Context, buildContext io.Reader, o build.ImageBuildOptions) (build.ImageBuildResponse, error) {
	tr := tar.NewReader(buildContext)
	var dockerfile string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Name == o.Dockerfile {
			b, _ := io.ReadAll(tr)
			dockerfile = string(b)
		}
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	_ = enc.Encode(map[string]string{"stream": "Step 1/2 : FROM scratch\n"})
	if strings.Contains(dockerfile, "FAIL") {
		_ = enc.Encode(map[string]string{"stream": "Step 2/2 : RUN false\n"})
		_ = enc.Encode(map[string]string{"error": "The command '/bin/sh -c false' returned a non-zero code: 1"})
	} else {
		_ = enc.Encode(map[string]string{"stream": "Step 2/2 : COPY . /\n"})
		_ = enc.Encode(map[string]any{"aux": map[string]string{"ID": "sha256:" + strings.Repeat("b", 64)}})
		f.mu.Lock()
		f.builds++
		for _, t := range o.Tags {
			f.labels[t] = o.Labels
		}
		f.mu.Unlock()
	}
	return build.ImageBuildResponse{Body: io.NopCloser(&out)}, nil
}

func (f *fakeImages) ImagePush(ctx context.Context, ref string, _ image.PushOptions) (io.ReadCloser, error) {
	if f.pushErr != "" {
		return io.NopCloser(strings.NewReader(fmt.Sprintf(`{"error":%q}`+"\n", f.pushErr))), nil
	}
	f.mu.Lock()
	labels := f.labels[ref]
	f.mu.Unlock()
	img, err := random.Image(64, 1)
	if err != nil {
		return nil, err
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.Config.Labels = labels
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return nil, err
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		return nil, err
	}
	d, _ := img.Digest()
	return io.NopCloser(strings.NewReader(fmt.Sprintf(`{"status":"pushed"}`+"\n"+`{"aux":{"Tag":"x","Digest":%q,"Size":1}}`+"\n", d.String()))), nil
}

func (f *fakeImages) ImageTag(context.Context, string, string) error { return nil }

// world is one runner's view: its settings, a registry, a target dir per
// environment.
type world struct {
	t       *testing.T
	s       settings.Settings
	reg     string // host:port
	images  *fakeImages
	targets string
	healthy func(driver.Release) bool
}

func newWorld(t *testing.T) *world {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	w := &world{t: t, s: settings.Defaults(), reg: strings.TrimPrefix(srv.URL, "http://"), images: &fakeImages{labels: map[string]map[string]string{}},
		targets: t.TempDir()}
	w.s.Registry.Image = w.reg + "/{project}"
	w.s.Registry.Retries = 0
	return w
}

// job is a job of project group/app at ref on stage, with variables.
func (w *world) job(stage, refType, ref, sha string, protected bool, vars ...api.Variable) (*Native, *bytes.Buffer) {
	t := w.t
	plan, err := PlanFor(&w.s, stage, refType, ref)
	require.NoError(t, err)
	job := executor.NewJob(&api.JobResponse{ID: 500, JobInfo: api.JobInfo{Stage: stage, ProjectFullPath: "group/app", PipelineID: 50},
		GitInfo: api.GitInfo{Ref: ref, RefType: refType, Sha: sha, Protected: &protected}, Variables: vars})
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY . /\n"), 0o644))
	var out bytes.Buffer
	creds := &target.Credentials{}
	noSleep := func(time.Duration) {}
	return &Native{Plan: plan, Settings: &w.s, Job: job, ProjectDir: dir, Out: &out,
		Images:   &Images{Engine: w.images, Creds: creds, Out: &out, Sleep: noSleep},
		Registry: &Registry{Creds: creds, Out: &out, Sleep: noSleep},
		Envs:     &Environments{Settings: &w.s, Open: w.open(&out), Out: &out},
	}, &out
}

func (w *world) open(out io.Writer) func(string) (driver.Driver, error) {
	return func(env string) (driver.Driver, error) {
		dir := filepath.Join(w.targets, env)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		return &fileDriver{Env: env, Dir: dir, Out: out, Healthy: w.healthy}, nil
	}
}

func (w *world) serving(env string) string {
	b, _ := os.ReadFile(filepath.Join(w.targets, env, "serving"))
	return string(b)
}

func (w *world) digestOf(ref string) v1.Hash {
	parsed, err := name.ParseReference(ref)
	require.NoError(w.t, err)
	desc, err := remote.Head(parsed)
	require.NoError(w.t, err)
	return desc.Digest
}

func TestFlowsDeployReleaseAndPromote(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	repo := w.reg + "/group/app"

	// master: built, pushed as latest, deployed to web by digest
	n, out := w.job("deploy", api.RefTypeBranch, "master", "c1", false)
	require.NoError(t, n.Run(ctx), out.String())
	latest := w.digestOf(repo + ":latest")
	assert.Equal(t, repo+"@"+latest.String(), w.serving("web"))
	assert.Contains(t, out.String(), "berth: stage deploy is native (deploy)")
	assert.Contains(t, out.String(), "berth:   Step 2/2 : COPY . /")
	assert.Contains(t, out.String(), "berth: done in")

	// develop and release-1.0.0 (one commit): each built, pushed, deployed
	n, _ = w.job("deploy", api.RefTypeBranch, "develop", "c2", false)
	require.NoError(t, n.Run(ctx))
	n, _ = w.job("deploy", api.RefTypeBranch, "release-1.0.0", "c2", false)
	require.NoError(t, n.Run(ctx))
	assert.Equal(t, repo+"@"+w.digestOf(repo+":release-1.0.0").String(), w.serving("alpha"))
	builds := w.images.builds

	// tag v1.0.0 in the release stage: the release branch's image of the
	// same commit is promoted, not rebuilt
	n, out = w.job("release", api.RefTypeTag, "v1.0.0", "c2", true)
	require.NoError(t, n.Run(ctx), out.String())
	assert.Equal(t, builds, w.images.builds, "no rebuild")
	assert.Equal(t, w.digestOf(repo+":release-1.0.0"), w.digestOf(repo+":v1.0.0"))
	assert.Contains(t, out.String(), "same digest")

	// a commit with no image among the candidates is built
	n, out = w.job("release", api.RefTypeTag, "v1.0.1", "c3", true)
	require.NoError(t, n.Run(ctx), out.String())
	assert.Equal(t, builds+1, w.images.builds)
	assert.Contains(t, out.String(), "no image of commit c3 among the candidates")
	assert.Contains(t, out.String(), "built from c2, not c3")

	// tag v1.0.0 deployed to prod from a protected manual job, by the
	// released digest
	n, out = w.job("deploy", api.RefTypeTag, "v1.0.0", "c2", true, api.Variable{Key: "CI_JOB_MANUAL", Value: "true"})
	require.NoError(t, n.Run(ctx), out.String())
	assert.Equal(t, repo+"@"+w.digestOf(repo+":release-1.0.0").String(), w.serving("prod"), "the tested image, promoted")
}

func TestFlowsRefusals(t *testing.T) {
	tests := []struct {
		name    string
		stage   string
		refType string
		ref     string
		sha     string
		protect bool
		vars    []api.Variable
		prepare func(w *world)
		wantErr string
		class   failure.Class
	}{
		{name: "a tag never released", stage: "deploy", refType: api.RefTypeTag, ref: "v2.0.0", sha: "c9", protect: true,
			vars: []api.Variable{{Key: "CI_JOB_MANUAL", Value: "true"}}, wantErr: "is not in the registry: run the release job of v2.0.0 first", class: failure.BuildFailure},
		{name: "a tag pushed again from another commit", stage: "deploy", refType: api.RefTypeTag, ref: "v2.0.0", sha: "c9", protect: true,
			vars: []api.Variable{{Key: "CI_JOB_MANUAL", Value: "true"}},
			prepare: func(w *world) {
				n, _ := w.job("release", api.RefTypeTag, "v2.0.0", "other", true)
				require.NoError(w.t, n.Run(context.Background()))
			}, wantErr: "was built from other, not from c9", class: failure.BuildFailure},
		{name: "prod from an unprotected tag", stage: "deploy", refType: api.RefTypeTag, ref: "v2.0.0", sha: "c9",
			wantErr: "deploys only from protected refs", class: failure.BuildFailure},
		{name: "a failing build", stage: "deploy", refType: api.RefTypeBranch, ref: "master", sha: "c1",
			prepare: func(w *world) {}, wantErr: `build failed at step "Step 2/2 : RUN false"`, class: failure.BuildFailure},
		{name: "a registry that refuses the push", stage: "deploy", refType: api.RefTypeBranch, ref: "master", sha: "c1",
			prepare: func(w *world) { w.images.pushErr = "unauthorized: authentication required" }, wantErr: "check that the registry is up and the credentials may push there", class: failure.SystemFailure},
		{name: "an unknown BERTH_ACTION", stage: "deploy", refType: api.RefTypeBranch, ref: "master", sha: "c1",
			vars: []api.Variable{{Key: "BERTH_ACTION", Value: "destroy"}}, wantErr: `BERTH_ACTION="destroy" is not an action berth knows`, class: failure.BuildFailure},
		{name: "a release that does not come up", stage: "deploy", refType: api.RefTypeBranch, ref: "master", sha: "c1",
			prepare: func(w *world) { w.healthy = func(driver.Release) bool { return false } }, wantErr: "latest did not come up; the previous version serves again", class: failure.BuildFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			if tt.prepare != nil {
				tt.prepare(w)
			}
			n, out := w.job(tt.stage, tt.refType, tt.ref, tt.sha, tt.protect, tt.vars...)
			if tt.name == "a failing build" {
				require.NoError(t, os.WriteFile(filepath.Join(n.ProjectDir, "Dockerfile"), []byte("FROM scratch\nRUN false # FAIL\n"), 0o644))
			}
			err := n.Run(context.Background())
			require.Error(t, err, out.String())
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, tt.class, failure.ClassOf(err))
		})
	}
}

func TestFlowsOwnershipAndOrder(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	n, _ := w.job("deploy", api.RefTypeBranch, "master", "c1", false)
	require.NoError(t, n.Run(ctx))

	// another project cannot deploy the environment it did not deploy first
	other, _ := w.job("deploy", api.RefTypeBranch, "master", "c2", false)
	other.Job.Project = "evil/app"
	err := other.Run(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "environment web belongs to group/app, the first project that deployed it")

	// an older pipeline of the same flow does not overwrite a newer deploy
	old, _ := w.job("deploy", api.RefTypeBranch, "master", "c0", false)
	old.Job.Pipeline = 10
	err = old.Run(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "newer than this pipeline 10")

	// berth.toml's projects decide when set
	env := w.s.Environments["web"]
	env.Projects = []string{"evil/app"}
	w.s.Environments["web"] = env
	err = n.Run(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "environment web belongs to evil/app (environments.web.projects in berth.toml)")
}

func TestFlowsRollbackJob(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	repo := w.reg + "/group/app"
	n, _ := w.job("deploy", api.RefTypeBranch, "master", "c1", false)
	require.NoError(t, n.Run(ctx))
	first := w.serving("web")
	n, _ = w.job("deploy", api.RefTypeBranch, "master", "c2", false)
	n.Job.Pipeline = 51
	require.NoError(t, n.Run(ctx))
	assert.NotEqual(t, first, w.serving("web"))

	n, out := w.job("deploy", api.RefTypeBranch, "master", "c2", false, api.Variable{Key: "BERTH_ACTION", Value: "rollback"})
	require.NoError(t, n.Run(ctx), out.String())
	assert.Equal(t, first, w.serving("web"))
	assert.Contains(t, out.String(), "runs latest again")
	assert.True(t, strings.HasPrefix(first, repo+"@sha256:"))

	n, out = w.job("deploy", api.RefTypeBranch, "feature-x", "c2", false, api.Variable{Key: "BERTH_ACTION", Value: "rollback"})
	require.NoError(t, n.Run(ctx))
	assert.Contains(t, out.String(), "no flow in berth.toml matches branch feature-x: nothing to deploy")
}

// The example driver keeps the contract by itself: the lock waits and
// takes over, the rollback choice is driver's.
func TestFileDriverKeepsTheContract(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	d := &fileDriver{Env: "web", Dir: dir, Out: &out}
	ctx := context.Background()
	alice := driver.Holder{Job: 1, Pipeline: 1, By: "alice", Deadline: time.Now().Add(time.Hour)}
	unlock, err := d.Lock(ctx, alice, time.Second)
	require.NoError(t, err)
	_, err = d.Lock(ctx, driver.Holder{Job: 2, By: "bob"}, 50*time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "still locked by job 1 of pipeline 1 (alice)")
	unlock()

	for i, tag := range []string{"v1", "v2"} {
		require.NoError(t, d.Deploy(ctx, driver.Release{Env: "web", Image: "app@" + tag, Tag: tag, Pipeline: int64(i)}))
	}
	rec, err := d.Rollback(ctx, "", "bob")
	require.NoError(t, err)
	assert.Equal(t, "v1", rec.Tag)
	hist, err := d.History(ctx)
	require.NoError(t, err)
	assert.Equal(t, driver.RolledBackBy("bob"), hist[0].Result)
	require.NoError(t, d.Recover(ctx, 1))

	// a lock left by a job past its deadline is taken over
	_, err = d.Lock(ctx, driver.Holder{Job: 3, Deadline: time.Now().Add(-time.Minute)}, time.Second)
	require.NoError(t, err)
	_, err = d.Lock(ctx, driver.Holder{Job: 4, Deadline: time.Now().Add(time.Hour)}, time.Second)
	require.NoError(t, err)
	assert.Contains(t, out.String(), "taking over the lock of web from job 3")
}
