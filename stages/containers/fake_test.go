package containers

// The container driver against targettest's in-memory engine: every step's
// failure, undo and recovery, without a Docker engine (make unit). The
// same behaviours against the real engine are in container_test.go.

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"
	"github.com/berthci/berth/stages/target/targettest"
)

var _ ContainerEngine = (*targettest.Engine)(nil)

// fakeDriver is a driver of environment "web" on a fresh fake engine,
// with a health command whose answer the engine's Healthy decides.
func fakeDriver(t *testing.T, portsOn string) (*Driver, *targettest.Engine, *bytes.Buffer) {
	t.Helper()
	eng := targettest.New()
	var out bytes.Buffer
	d := &Driver{Env: "web", Engine: eng, Creds: &target.Credentials{}, Out: &out,
		Spec: settings.ContainerSpec{Name: "web", Ports: []string{"127.0.0.1:6000:5000"}, HealthCmd: []string{"true"},
			HealthTimeout: settings.Duration(200 * time.Millisecond), StopTimeout: settings.Duration(time.Second), Keep: 2, PortsOn: portsOn}}
	if portsOn == settings.PortsOnAnchor {
		d.AnchorBinary = staticELF(t)
	}
	eng.Healthy = func(image string) bool { return !strings.Contains(image, "bad") }
	return d, eng, &out
}

// staticELF writes the smallest file debug/elf reads as a static Linux
// binary: the anchor image is made of it, never run by the fake.
func staticELF(t *testing.T) string {
	t.Helper()
	h := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Ehsize: 64, Phentsize: 56, Shentsize: 64}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	var b bytes.Buffer
	require.NoError(t, binary.Write(&b, binary.LittleEndian, h))
	p := filepath.Join(t.TempDir(), "berth")
	require.NoError(t, os.WriteFile(p, b.Bytes(), 0o755))
	return p
}

var jobs int64

// release is a release of image tag, present in the registry (the fake
// pulls anything).
func release(tag string) driver.Release {
	jobs++
	digest := fmt.Sprintf("sha256:%064x", len(tag)*1000+int(jobs))
	return driver.Release{Env: "web", Image: "reg.example/app/" + tag + "@" + digest, Digest: digest, Tag: tag, Ref: "master",
		Pipeline: jobs, Job: jobs, By: "alice", Project: "group/app", Flow: "main"}
}

func serving(t *testing.T, eng *targettest.Engine) string {
	t.Helper()
	c, ok := eng.Get("web")
	require.True(t, ok, "web exists")
	require.True(t, c.Running, "web runs")
	return c.Config.Labels[driver.LabelTag]
}

func TestFakeDeployReplacesAndKeeps(t *testing.T) {
	for _, portsOn := range []string{settings.PortsOnContainer, settings.PortsOnAnchor} {
		t.Run(portsOn, func(t *testing.T) {
			d, eng, out := fakeDriver(t, portsOn)
			ctx := context.Background()
			for _, tag := range []string{"v1", "v2", "v3", "v4"} {
				require.NoError(t, d.Deploy(ctx, release(tag)), out.String())
				assert.Equal(t, tag, serving(t, eng))
			}
			hist, err := d.History(ctx)
			require.NoError(t, err)
			var got []string
			for _, r := range hist {
				got = append(got, r.Tag+" "+r.Result)
			}
			assert.Equal(t, []string{"v4 serving", "v3 replaced", "v2 replaced"}, got, "keep = 2 previous")
			web, _ := eng.Get("web")
			if portsOn == settings.PortsOnAnchor {
				anc, ok := eng.Get(AnchorName("web"))
				require.True(t, ok)
				assert.True(t, anc.Running)
				assert.Equal(t, "container:"+anc.ID, string(web.Host.NetworkMode), "joins its anchor")
				assert.Equal(t, RoleAnchor, anc.Config.Labels[engine.LabelRole])
				assert.Empty(t, web.Host.PortBindings, "the anchor publishes")
			} else {
				assert.NotEmpty(t, web.Host.PortBindings)
			}
			_, locked := eng.Get(driver.LockName("web"))
			assert.False(t, locked, "Deploy takes no lock itself")
		})
	}
}

func TestFakeWithoutAnAnchorBinaryThePortsGoOnTheContainer(t *testing.T) {
	d, eng, out := fakeDriver(t, settings.PortsOnAnchor)
	d.AnchorBinary = ""
	require.NoError(t, d.Deploy(context.Background(), release("v1")))
	assert.Contains(t, out.String(), "publishes its ports itself (no berth binary to make the anchor from)")
	web, _ := eng.Get("web")
	assert.NotEmpty(t, web.Host.PortBindings)
}

func TestFakeUnhealthyDeployRestoresTheOldVersion(t *testing.T) {
	for _, portsOn := range []string{settings.PortsOnContainer, settings.PortsOnAnchor} {
		t.Run(portsOn, func(t *testing.T) {
			d, eng, out := fakeDriver(t, portsOn)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, release("v1")))
			bad := release("bad")
			err := d.Deploy(ctx, bad)
			require.Error(t, err)
			assert.Equal(t, failure.BuildFailure, failure.ClassOf(err), "the release's fault")
			assert.Contains(t, err.Error(), "did not become healthy")
			assert.Contains(t, err.Error(), "the previous container serves again")
			assert.Equal(t, "v1", serving(t, eng), out.String())
			hist, err := d.History(ctx)
			require.NoError(t, err)
			require.Len(t, hist, 2)
			assert.Equal(t, driver.ResultFailed, hist[0].Result, "newest first")
			assert.Equal(t, driver.ResultServing, hist[1].Result)
			assert.True(t, strings.HasSuffix(hist[0].ID, "-failed"), hist[0].ID)
			failed, ok := eng.Get(hist[0].ID)
			require.True(t, ok, "the failed container is kept for its logs: %v", eng.Names())
			assert.False(t, failed.Running)
		})
	}
}

func TestFakeFirstDeployThatFailsLeavesNothing(t *testing.T) {
	d, eng, _ := fakeDriver(t, settings.PortsOnContainer)
	err := d.Deploy(context.Background(), release("bad"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nothing ran before, so nothing serves now")
	assert.Empty(t, eng.Running())
}

// Each step that fails is undone with every step before it: the old
// version serves, and the error keeps the failure's class.
func TestFakeEveryFailedStepIsUndone(t *testing.T) {
	tests := []struct {
		method, target string
		class          failure.Class
	}{
		{"ContainerCreate", "web-new-", failure.BuildFailure},
		{"CopyToContainer", "ledger", failure.SystemFailure},
		{"ContainerStop", "", failure.SystemFailure},
		{"ContainerRename", "", failure.SystemFailure},
		{"ContainerStart", "", failure.BuildFailure},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			d, eng, out := fakeDriver(t, settings.PortsOnContainer)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, release("v1")))
			old, _ := eng.Get("web")
			match := tt.target
			if match == "ledger" {
				led, ok := eng.Get("berth-ledger-web")
				require.True(t, ok, "%v", eng.Names())
				match = led.ID // written by id
			}
			failed := false
			eng.Fail = func(method, target string) error {
				if method != tt.method || failed || !strings.Contains(target, match) {
					return nil
				}
				// the first matching call fails; undos go through
				if tt.method == "ContainerStart" && target == old.ID {
					return nil
				}
				failed = true
				return errors.New("injected " + method)
			}
			err := d.Deploy(ctx, release("v2"))
			require.Error(t, err)
			assert.True(t, failed, "the step ran")
			assert.Contains(t, err.Error(), "injected "+tt.method)
			assert.Equal(t, tt.class, failure.ClassOf(err), err.Error())
			eng.Fail = nil
			assert.Equal(t, "v1", serving(t, eng), out.String())
			now, _ := eng.Get("web")
			assert.Equal(t, old.ID, now.ID, "the same container serves")
			assert.Empty(t, leftovers(eng), "nothing half done")
		})
	}
}

// leftovers are containers a deploy made and did not clean up.
func leftovers(eng *targettest.Engine) []string {
	var out []string
	for _, n := range eng.Names() {
		if strings.Contains(n, "-new-") {
			out = append(out, n)
		}
	}
	return out
}

func TestFakeCancelledDeployIsUndone(t *testing.T) {
	for _, step := range []string{"create", "journal", "stop-old", "rename-old", "start-anchor", "rename-new", "start-new"} {
		t.Run(step, func(t *testing.T) {
			d, eng, out := fakeDriver(t, settings.PortsOnContainer)
			require.NoError(t, d.Deploy(context.Background(), release("v1")))
			ctx, cancel := context.WithCancel(context.Background())
			d.Pause = func(_ context.Context, at string) {
				if at == "deploy:"+step {
					cancel()
				}
			}
			err := d.Deploy(ctx, release("v2"))
			require.Error(t, err)
			assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
			assert.Equal(t, "v1", serving(t, eng), out.String())
			assert.Empty(t, leftovers(eng))
		})
	}
}

// An undo that fails too leaves the journal; the next deploy, or the job's
// cleanup (Recover), puts it right.
func TestFakeAFailedUndoIsFinishedLater(t *testing.T) {
	for _, finish := range []string{"next deploy", "recover"} {
		t.Run(finish, func(t *testing.T) {
			d, eng, out := fakeDriver(t, settings.PortsOnContainer)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, release("v1")))
			old, _ := eng.Get("web")
			unlock, err := d.Lock(ctx, driver.Holder{Job: 77, Pipeline: 7, By: "alice", Deadline: time.Now().Add(time.Hour)}, time.Second)
			require.NoError(t, err)
			_ = unlock // a killed berth never unlocks
			eng.Fail = func(method, target string) error {
				if method == "ContainerStart" && target == old.ID {
					return errors.New("engine hiccup")
				}
				return nil
			}
			err = d.Deploy(ctx, release("bad"))
			require.Error(t, err)
			assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
			assert.Contains(t, err.Error(), "putting the previous version back failed too")
			eng.Fail = nil

			d2, _, _ := fakeDriverOn(eng, out)
			if finish == "recover" {
				require.NoError(t, d2.Recover(ctx, 77))
				_, locked := eng.Get(driver.LockName("web"))
				assert.False(t, locked, "Recover releases the job's lock")
			} else {
				require.NoError(t, d2.Deploy(ctx, release("v3")))
			}
			assert.Contains(t, out.String(), "did not finish: putting it right first")
			want := "v1"
			if finish == "next deploy" {
				want = "v3"
			}
			assert.Equal(t, want, serving(t, eng))
		})
	}
}

// fakeDriverOn is a second berth on the same engine: nothing cached.
func fakeDriverOn(eng *targettest.Engine, out *bytes.Buffer) (*Driver, *targettest.Engine, *bytes.Buffer) {
	return &Driver{Env: "web", Engine: eng, Creds: &target.Credentials{}, Out: out,
		Spec: settings.ContainerSpec{Name: "web", Ports: []string{"127.0.0.1:6000:5000"}, HealthCmd: []string{"true"},
			HealthTimeout: settings.Duration(200 * time.Millisecond), StopTimeout: settings.Duration(time.Second), Keep: 2,
			PortsOn: settings.PortsOnContainer}}, eng, out
}

func TestFakeRollback(t *testing.T) {
	tests := []struct {
		name    string
		to      string
		want    string
		wantErr string
	}{
		{name: "previous", want: "v2"},
		{name: "by tag", to: "v1", want: "v1"},
		{name: "not a failed one", to: "bad", wantErr: "no kept container of web holds bad"},
		{name: "unknown", to: "v9", wantErr: "no kept container of web holds v9"},
		{name: "not what serves", to: "v3", wantErr: "holds v3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, eng, out := fakeDriver(t, settings.PortsOnAnchor)
			ctx := context.Background()
			for _, tag := range []string{"v1", "v2", "v3"} {
				require.NoError(t, d.Deploy(ctx, release(tag)))
			}
			require.Error(t, d.Deploy(ctx, release("bad")))
			rec, err := d.Rollback(ctx, tt.to, "bob")
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
				assert.Equal(t, "v3", serving(t, eng))
				return
			}
			require.NoError(t, err, out.String())
			assert.Equal(t, tt.want, rec.Tag)
			assert.Equal(t, tt.want, serving(t, eng))
			hist, err := d.History(ctx)
			require.NoError(t, err)
			results := map[string]string{}
			for _, r := range hist {
				results[r.Tag] = r.Result
			}
			assert.Equal(t, driver.ResultServing, results[tt.want])
			assert.Equal(t, driver.RolledBackBy("bob"), results["v3"])
		})
	}
}

func TestFakeRollbackOfAFailedStepPutsTheCurrentBack(t *testing.T) {
	d, eng, _ := fakeDriver(t, settings.PortsOnContainer)
	ctx := context.Background()
	require.NoError(t, d.Deploy(ctx, release("v1")))
	require.NoError(t, d.Deploy(ctx, release("v2")))
	eng.Healthy = func(image string) bool { return !strings.Contains(image, "/v1@") }
	_, err := d.Rollback(ctx, "", "bob")
	require.Error(t, err)
	assert.Equal(t, "v2", serving(t, eng), "what served before the rollback serves again")
}

func TestFakeDeployAdoptsAHandMadeContainer(t *testing.T) {
	d, eng, _ := fakeDriver(t, settings.PortsOnContainer)
	ctx := context.Background()
	eng.AddImage("app:hand")
	made, err := eng.ContainerCreate(ctx, containerConfig("app:hand", "MODE=hand"), hostWithPort("6000"), nil, nil, "web")
	require.NoError(t, err)
	require.NoError(t, eng.ContainerStart(ctx, made.ID, startOptions))

	require.NoError(t, d.Deploy(ctx, release("v1")))
	assert.Equal(t, "v1", serving(t, eng))
	web, _ := eng.Get("web")
	assert.Contains(t, web.Config.Env, "MODE=hand", "its env is kept")
	hist, err := d.History(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Contains(t, hist[1].Result, "adopted")

	rec, err := d.Rollback(ctx, "", "bob")
	require.NoError(t, err)
	assert.Equal(t, "app:hand", rec.Tag)
}

func TestFakeLock(t *testing.T) {
	tests := []struct {
		name     string
		holder   driver.Holder
		wantErr  string
		wantSaid string
	}{
		{name: "a live holder makes the next wait, then give up", holder: driver.Holder{Job: 1, Pipeline: 1, By: "alice", Deadline: time.Now().Add(time.Hour)},
			wantErr: "still locked by job 1 of pipeline 1 (alice)", wantSaid: "waiting for web: job 1 of pipeline 1 (alice) deploys it since"},
		{name: "a holder past its deadline is taken over", holder: driver.Holder{Job: 1, Pipeline: 1, By: "alice", Deadline: time.Now().Add(-time.Minute)},
			wantSaid: "taking over the lock of web from job 1 of pipeline 1 (alice): its job is over since"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, eng, out := fakeDriver(t, settings.PortsOnContainer)
			ctx := context.Background()
			_, err := d.Lock(ctx, tt.holder, time.Second)
			require.NoError(t, err)
			unlock, err := d.Lock(ctx, driver.Holder{Job: 2, Pipeline: 2, By: "bob", Deadline: time.Now().Add(time.Hour)}, 100*time.Millisecond)
			assert.Contains(t, out.String(), tt.wantSaid)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
				return
			}
			require.NoError(t, err)
			lock, _ := eng.Get(driver.LockName("web"))
			assert.Equal(t, "2", lock.Config.Labels[driver.LabelLockJob])
			unlock()
			_, held := eng.Get(driver.LockName("web"))
			assert.False(t, held)
		})
	}
}

func TestFakeLockOfAHolderNotHeardOf(t *testing.T) {
	d, eng, out := fakeDriver(t, settings.PortsOnContainer)
	ctx := context.Background()
	_, err := d.Lock(ctx, driver.Holder{Job: 1, Pipeline: 1, By: "alice", Deadline: time.Now().Add(time.Hour)}, time.Second)
	require.NoError(t, err)
	lock, _ := eng.Get(driver.LockName("web"))
	require.NoError(t, eng.CopyToContainer(ctx, lock.ID, "/", targettest.Tar("heartbeat", "x"), copyOptions))
	eng.SetMtime(lock.ID, "/heartbeat", time.Now().Add(-time.Hour))
	_, err = d.Lock(ctx, driver.Holder{Job: 2, Pipeline: 2, By: "bob", Deadline: time.Now().Add(time.Hour)}, time.Second)
	require.NoError(t, err)
	assert.Contains(t, out.String(), "has not been heard of for")
}

func TestFakeLockRefusesAContainerBerthDidNotMake(t *testing.T) {
	d, eng, _ := fakeDriver(t, settings.PortsOnContainer)
	ctx := context.Background()
	eng.AddImage("busybox")
	_, err := eng.ContainerCreate(ctx, containerConfig("busybox"), nil, nil, nil, driver.LockName("web"))
	require.NoError(t, err)
	_, err = d.Lock(ctx, driver.Holder{Job: 2}, time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "that berth did not make")
}

func TestFakeOwnerIsTheFirstDeployer(t *testing.T) {
	d, _, _ := fakeDriver(t, settings.PortsOnContainer)
	ctx := context.Background()
	owner, err := d.Owner(ctx, "group/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner)
	owner, err = d.Owner(ctx, "other/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner, "the first claim stands")
}

func TestFakeEngineFaultsAreTheHostsFault(t *testing.T) {
	tests := []struct {
		name string
		set  func(*targettest.Engine)
		want string
	}{
		{"pull refused", func(e *targettest.Engine) { e.PullError = func(string) string { return "manifest unknown" } }, "pull"},
		{"ledger unreadable", func(e *targettest.Engine) {
			e.Fail = func(m, _ string) error {
				if m == "CopyFromContainer" {
					return errors.New("engine broke")
				}
				return nil
			}
		}, "read the ledger"},
		{"list fails", func(e *targettest.Engine) {
			e.Fail = func(m, _ string) error {
				if m == "ContainerList" {
					return errors.New("engine broke")
				}
				return nil
			}
		}, "engine broke"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, eng, _ := fakeDriver(t, settings.PortsOnContainer)
			ctx := context.Background()
			require.NoError(t, d.Deploy(ctx, release("v1")))
			tt.set(eng)
			d2, _, _ := fakeDriverOn(eng, &bytes.Buffer{})
			err := d2.Deploy(ctx, release("v2"))
			if tt.name == "list fails" {
				_, err = d2.History(ctx)
			}
			require.Error(t, err)
			assert.Equal(t, failure.SystemFailure, failure.ClassOf(err), err.Error())
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func containerConfig(image string, env ...string) *container.Config {
	return &container.Config{Image: image, Env: env, ExposedPorts: nat.PortSet{"5000/tcp": {}}}
}

func hostWithPort(port string) *container.HostConfig {
	return &container.HostConfig{PortBindings: nat.PortMap{"5000/tcp": {{HostIP: "127.0.0.1", HostPort: port}}}}
}

var (
	startOptions = container.StartOptions{}
	copyOptions  = container.CopyToContainerOptions{}
)
