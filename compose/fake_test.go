package compose_test

// The compose driver against targettest's in-memory engine and a fake
// Applier in place of berth-compose: its switch, undo, journal and history
// without docker compose (make unit). driver_test.go runs the same against
// the real engine and compose.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/compose"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
	"github.com/berthci/berth/stages/target/targettest"
)

var _ compose.Engine = (*targettest.Engine)(nil)

// fakeApplier brings "the project" up as one container of its web service
// on the fake engine, the way compose labels it. An image with "bad" in it
// does not come up, one with "invalid" does not load, one with "hang"
// waits until it is cancelled; down makes every call fail as an engine
// that does not answer.
type fakeApplier struct {
	eng  *targettest.Engine
	mu   sync.Mutex
	reqs []compose.Request
	down bool
}

func (f *fakeApplier) Apply(ctx context.Context, req compose.Request) (compose.Result, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	down := f.down
	f.mu.Unlock()
	if down {
		return compose.Result{}, failure.Systemf("berth-compose: cannot connect to the Docker daemon")
	}
	switch {
	case strings.Contains(req.Image, "invalid"):
		return compose.Result{Answer: driver.Answer{Error: "compose.yaml: services.web: privileged is refused", Class: driver.ClassInvalid}}, nil
	case strings.Contains(req.Image, "hang"):
		<-ctx.Done()
		return compose.Result{Answer: driver.Answer{Error: "cancelled", Class: driver.ClassBuild}}, nil
	}
	name := req.Project + "-web-1"
	_ = f.eng.ContainerRemove(ctx, name, container.RemoveOptions{Force: true})
	labels := map[string]string{"com.docker.compose.project": req.Project, "com.docker.compose.service": "web"}
	for k, v := range req.Labels {
		labels[k] = v
	}
	f.eng.AddImage(req.Image)
	made, err := f.eng.ContainerCreate(ctx, &container.Config{Image: req.Image, Labels: labels}, nil, nil, nil, name)
	if err != nil {
		return compose.Result{}, err
	}
	if strings.Contains(req.Image, "bad") {
		return compose.Result{Answer: driver.Answer{Error: fmt.Sprintf("project %s did not come up: web exited (3)", req.Project), Class: driver.ClassBuild},
			Failing: "web", Logs: "cannot start: no database\n", Services: []string{"web"}}, nil
	}
	if err := f.eng.ContainerStart(ctx, made.ID, container.StartOptions{}); err != nil {
		return compose.Result{}, err
	}
	return compose.Result{Services: []string{"web"}}, nil
}

// images are the images the project was brought up with, in order.
func (f *fakeApplier) images() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.reqs {
		out = append(out, r.Image[strings.LastIndex(r.Image, "/")+1:strings.Index(r.Image, "@")])
	}
	return out
}

func fakeCompose(t *testing.T) (*compose.Driver, *targettest.Engine, *fakeApplier, *bytes.Buffer) {
	t.Helper()
	eng := targettest.New()
	app := &fakeApplier{eng: eng}
	var out bytes.Buffer
	d := &compose.Driver{Env: "integration", Engine: eng, Apply: app, Creds: &target.Credentials{}, Out: &out, Dir: t.TempDir(),
		Spec: settings.ComposeSpec{Project: "shop", WaitTimeout: settings.Duration(time.Second), Keep: 2}}
	return d, eng, app, &out
}

var jobs int64

func fakeRelease(tag string) driver.Release {
	jobs++
	digest := fmt.Sprintf("sha256:%064x", jobs)
	return driver.Release{Env: "integration", Image: "reg.example/" + tag + "@" + digest, Digest: digest, Tag: tag,
		Ref: "develop", Pipeline: jobs, Job: jobs, By: "alice", Flow: "develop"}
}

func results(t *testing.T, d *compose.Driver) []string {
	t.Helper()
	hist, err := d.History(context.Background())
	require.NoError(t, err)
	var out []string
	for _, r := range hist {
		out = append(out, r.Tag+" "+r.Result)
	}
	return out
}

func TestFakeComposeDeploysAndKeeps(t *testing.T) {
	d, eng, app, out := fakeCompose(t)
	ctx := context.Background()
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		require.NoError(t, d.Deploy(ctx, fakeRelease(tag)), out.String())
	}
	assert.Equal(t, []string{"v4 serving", "v3 replaced", "v2 replaced"}, results(t, d), "keep = 2 earlier ones")
	web, ok := eng.Get("shop-web-1")
	require.True(t, ok)
	assert.Equal(t, "v4", web.Config.Labels[driver.LabelTag], "the services carry the release's labels")
	assert.Equal(t, []string{"v1", "v2", "v3", "v4"}, app.images())
	assert.Contains(t, out.String(), "berth: integration: compose up, project shop, on v4")
	assert.Contains(t, out.String(), "berth: integration: web up and running in")
}

func TestFakeComposeFailedDeploys(t *testing.T) {
	tests := []struct {
		tag       string
		class     failure.Class
		wantErr   string
		wantHist  []string
		wantBack  bool
		wantClass string
	}{
		{tag: "bad", class: failure.BuildFailure, wantErr: "did not come up: project shop did not come up: web exited (3)\nLast log lines of web:\ncannot start: no database\nThe previous digest",
			wantHist: []string{"v1 serving", "bad " + driver.ResultFailed}, wantBack: true},
		{tag: "invalid", class: failure.BuildFailure, wantErr: "privileged is refused\nNothing was changed: shop still runs what it ran.",
			wantHist: []string{"v1 serving"}},
	}
	for _, tt := range tests {
		t.Run(tt.tag, func(t *testing.T) {
			d, _, app, out := fakeCompose(t)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, fakeRelease("v1")))
			err := d.Deploy(ctx, fakeRelease(tt.tag))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, tt.class, failure.ClassOf(err))
			assert.Equal(t, tt.wantHist, results(t, d), out.String())
			imgs := app.images()
			if tt.wantBack {
				assert.Equal(t, "v1", imgs[len(imgs)-1], "the previous digest goes back")
			} else {
				assert.Equal(t, tt.tag, imgs[len(imgs)-1], "nothing to put back")
			}
		})
	}
}

func TestFakeComposeFirstDeployThatFailsSaysNothingServes(t *testing.T) {
	d, _, _, _ := fakeCompose(t)
	err := d.Deploy(context.Background(), fakeRelease("bad"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nothing ran before, so nothing serves now.")
}

func TestFakeComposeCancelledDeployPutsThePreviousBack(t *testing.T) {
	d, _, app, _ := fakeCompose(t)
	require.NoError(t, d.Deploy(context.Background(), fakeRelease("v1")))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := d.Deploy(ctx, fakeRelease("hang"))
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "the deploy was cancelled")
	assert.Equal(t, []string{"v1", "hang", "v1"}, app.images())
	assert.Equal(t, []string{"v1 serving", "hang " + driver.ResultInterrupted}, results(t, d))
}

func TestFakeComposeEngineDownIsTheHostsFault(t *testing.T) {
	d, _, app, _ := fakeCompose(t)
	require.NoError(t, d.Deploy(context.Background(), fakeRelease("v1")))
	app.down = true
	err := d.Deploy(context.Background(), fakeRelease("v2"))
	require.Error(t, err)
	assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "putting the previous digest back failed too")

	// the journal stays: the next berth, with the engine back, finishes it
	app.down = false
	d2 := &compose.Driver{Env: d.Env, Engine: d.Engine, Apply: app, Creds: d.Creds, Out: &bytes.Buffer{}, Spec: d.Spec}
	unlock, err := d2.Lock(context.Background(), driver.Holder{Job: 9, Deadline: time.Now().Add(time.Hour)}, time.Second)
	require.NoError(t, err)
	defer unlock()
	require.NoError(t, d2.Recover(context.Background(), 9))
	assert.Contains(t, d2.Out.(*bytes.Buffer).String(), "did not finish: putting the previous digest back first")
	hist := results(t, d2)
	assert.Equal(t, "v1 serving", hist[0])
}

func TestFakeComposeRollback(t *testing.T) {
	tests := []struct {
		name, to, want, wantErr string
	}{
		{name: "previous", want: "v2"},
		{name: "by tag", to: "v1", want: "v1"},
		{name: "not a failed one", to: "bad", wantErr: "holds no bad to roll back to"},
		{name: "not what serves", to: "v3", wantErr: "holds no v3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _, app, _ := fakeCompose(t)
			d.Spec.Keep = 10
			ctx := context.Background()
			for _, tag := range []string{"v1", "v2", "v3"} {
				require.NoError(t, d.Deploy(ctx, fakeRelease(tag)))
			}
			require.Error(t, d.Deploy(ctx, fakeRelease("bad")))
			rec, err := d.Rollback(ctx, tt.to, "bob")
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, rec.Tag)
			imgs := app.images()
			assert.Equal(t, tt.want, imgs[len(imgs)-1])
			hist := results(t, d)
			assert.Equal(t, tt.want+" serving", hist[0])
			assert.Contains(t, hist, "v3 "+driver.RolledBackBy("bob"))
		})
	}
}

func TestFakeComposeRollbackOfNothing(t *testing.T) {
	d, _, _, _ := fakeCompose(t)
	_, err := d.Rollback(context.Background(), "", "bob")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "project shop runs nothing: deploy a version first")
}

// A project an earlier berth deployed, without a ledger: its labels are
// the history, read once.
func TestFakeComposeTakesOverAnEarlierBerthsLabels(t *testing.T) {
	d, eng, _, _ := fakeCompose(t)
	ctx := context.Background()
	eng.AddImage("reg.example/old@sha256:" + strings.Repeat("0", 64))
	labels := driver.Labels("integration", driver.Entry{Tag: "old", Image: "reg.example/old@sha256:" + strings.Repeat("0", 64), Job: 3,
		Time: time.Now().Add(-time.Hour).UTC().Truncate(time.Second)})
	labels["com.docker.compose.project"] = "shop"
	labels["berth.history"] = `[{"time":"2026-01-01T00:00:00Z","tag":"older","image":"reg.example/older@sha256:1","result":"replaced"}]`
	_, err := eng.ContainerCreate(ctx, &container.Config{Image: "reg.example/old@sha256:" + strings.Repeat("0", 64), Labels: labels}, nil, nil, nil, "shop-web-1")
	require.NoError(t, err)
	assert.Equal(t, []string{"old serving", "older replaced"}, results(t, d))
}

func TestFakeComposeOwnerAndLock(t *testing.T) {
	d, _, _, out := fakeCompose(t)
	ctx := context.Background()
	owner, err := d.Owner(ctx, "group/shop")
	require.NoError(t, err)
	assert.Equal(t, "group/shop", owner)
	unlock, err := d.Lock(ctx, driver.Holder{Job: 1, Pipeline: 1, By: "alice", Deadline: time.Now().Add(time.Hour)}, time.Second)
	require.NoError(t, err)
	_, err = d.Lock(ctx, driver.Holder{Job: 2, Pipeline: 2, By: "bob", Deadline: time.Now().Add(time.Hour)}, 50*time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, out.String(), "waiting for integration: job 1 of pipeline 1 (alice)")
	unlock()
	unlock2, err := d.Lock(ctx, driver.Holder{Job: 2}, time.Second)
	require.NoError(t, err)
	unlock2()
}

func TestFakeComposeRequest(t *testing.T) {
	d, _, app, _ := fakeCompose(t)
	d.Spec.Files, d.Spec.Services, d.Spec.Allow, d.Reserved = []string{"compose.yaml"}, []string{"web"}, []string{"privileged"}, []string{"web"}
	d.DockerHost, d.SSHOptions = "ssh://deploy@host", []string{"-p", "2222"}
	require.NoError(t, d.Deploy(context.Background(), fakeRelease("v1")))
	req := app.reqs[0]
	assert.Equal(t, "shop", req.Project)
	assert.Equal(t, d.Dir, req.WorkingDir)
	assert.Equal(t, []string{"compose.yaml"}, req.Files)
	assert.Equal(t, []string{"web"}, req.Services)
	assert.Equal(t, []string{"privileged"}, req.Allow)
	assert.Equal(t, []string{"web"}, req.Reserved)
	assert.Equal(t, "ssh://deploy@host", req.DockerHost)
	assert.Equal(t, time.Second, req.WaitTimeout)
	assert.Equal(t, "v1", req.Labels[driver.LabelTag])
}

func TestFakeComposeLedgerUnreadable(t *testing.T) {
	d, eng, _, _ := fakeCompose(t)
	eng.Fail = func(m, _ string) error {
		if m == "ContainerInspect" {
			return errors.New("engine down")
		}
		return nil
	}
	_, err := d.History(context.Background())
	require.Error(t, err)
	assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
}
