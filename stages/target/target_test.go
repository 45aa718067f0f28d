package target

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target/targettest"
)

var (
	_ LockEngine = (*targettest.Engine)(nil)
	_ Puller     = (*targettest.Engine)(nil)
)

func TestLedgerRoundTrip(t *testing.T) {
	eng := targettest.New()
	ctx := context.Background()
	l, ok, err := ReadLedger(ctx, eng, "web", "web")
	require.NoError(t, err)
	assert.False(t, ok, "none yet")
	assert.Equal(t, Ledger{Env: "web", Key: "web"}, l)

	l.Push(driver.Entry{ID: "a", Tag: "v1", Result: driver.ResultServing}, driver.ResultReplaced)
	l.Push(driver.Entry{ID: "b", Tag: "v2", Result: driver.ResultServing}, driver.ResultReplaced)
	l.Switch = &Switch{Kind: "deploy", Job: 3, From: "b"}
	require.NoError(t, WriteLedger(ctx, eng, l))
	assert.True(t, eng.HasImage(EmptyImage), "the empty image is imported once")

	got, ok, err := ReadLedger(ctx, eng, "web", "web")
	require.NoError(t, err)
	assert.True(t, ok)
	require.Len(t, got.Entries, 2)
	assert.Equal(t, "v2", got.Entries[0].Tag)
	assert.Equal(t, driver.ResultReplaced, got.Entries[1].Result, "the one that served is replaced")
	cur, ok := got.Serving()
	assert.True(t, ok)
	assert.Equal(t, "b", cur.ID)
	e, ok := got.Find("a")
	require.True(t, ok)
	assert.Equal(t, "v1", e.Tag)
	_, ok = got.Find("zz")
	assert.False(t, ok)
	assert.Equal(t, int64(3), got.Switch.Job)

	c, ok := eng.Get(LedgerName("web"))
	require.True(t, ok)
	assert.False(t, c.Running, "a ledger never runs")
	assert.Equal(t, "none", string(c.Host.NetworkMode))
}

func TestLedgerRefusesWhatBerthDidNotMake(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(*targettest.Engine)
		wantErr string
	}{
		{"a stranger's container", func(e *targettest.Engine) {
			e.AddImage("busybox")
			_, _ = e.ContainerCreate(context.Background(), &container.Config{Image: "busybox"}, nil, nil, nil, LedgerName("web"))
		}, "that berth did not make stands where web's ledger belongs"},
		{"damaged", func(e *targettest.Engine) {
			require.NoError(t, WriteLedger(context.Background(), e, Ledger{Env: "web", Key: "web"}))
			c, _ := e.Get(LedgerName("web"))
			require.NoError(t, e.CopyToContainer(context.Background(), c.ID, "/", targettest.Tar(ledgerFile, "{not json"), container.CopyToContainerOptions{}))
		}, "the ledger of web is damaged"},
		{"the engine fails", func(e *targettest.Engine) {
			e.Fail = func(m, _ string) error {
				if m == "ContainerInspect" {
					return errors.New("engine down")
				}
				return nil
			}
		}, "read the ledger of web: engine down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := targettest.New()
			tt.prepare(eng)
			_, _, err := ReadLedger(context.Background(), eng, "web", "web")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
			if tt.name == "a stranger's container" {
				err := WriteLedger(context.Background(), eng, Ledger{Env: "web", Key: "web"})
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
			}
		})
	}
}

func TestLedgerStoreReadsOnce(t *testing.T) {
	eng := targettest.New()
	ctx := context.Background()
	reads := 0
	eng.Fail = func(m, _ string) error {
		if m == "CopyFromContainer" {
			reads++
		}
		return nil
	}
	s := &LedgerStore{Engine: eng, Env: "web", Key: "web"}
	owner, err := s.Owner(ctx, "group/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner)
	owner, err = s.Owner(ctx, "other/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner, "the first claim stands")
	l, ok, err := s.Read(ctx)
	require.NoError(t, err)
	assert.True(t, ok)
	l.Entries = append(l.Entries, driver.Entry{Tag: "x"})
	again, _, _ := s.Read(ctx)
	assert.Empty(t, again.Entries, "a read is a copy")
	assert.Equal(t, 0, reads, "nothing was read back from the target: the store keeps what it wrote")

	eng.Fail = func(m, _ string) error {
		if m == "CopyToContainer" {
			return errors.New("disk full")
		}
		return nil
	}
	require.Error(t, s.Write(ctx, l))
	eng.Fail = nil
	fresh, _, err := s.Read(ctx)
	require.NoError(t, err)
	assert.Empty(t, fresh.Entries, "after a failed write the target is read again")
}

func TestEngineLock(t *testing.T) {
	eng := targettest.New()
	ctx := context.Background()
	var out bytes.Buffer
	h := driver.Holder{Job: 5, Pipeline: 2, By: "alice", Deadline: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}.ThisProcess()
	unlock, err := EngineLock(ctx, eng, &out, "web", "web", h, time.Second)
	require.NoError(t, err)
	lock, ok := eng.Get(driver.LockName("web"))
	require.True(t, ok)
	assert.Equal(t, h, driver.HolderOfLabels(lock.Config.Labels))
	job, held, err := LockHolder(ctx, eng, "web")
	require.NoError(t, err)
	assert.True(t, held)
	assert.Equal(t, int64(5), job)

	beat(ctx, eng, lock.ID)
	assert.Empty(t, staleLockOf(t, eng), "it beats")
	eng.SetMtime(lock.ID, "/"+beatFile, time.Now().Add(-time.Hour))
	assert.Contains(t, staleLockOf(t, eng), "has not been heard of")

	unlock()
	_, held, err = LockHolder(ctx, eng, "web")
	require.NoError(t, err)
	assert.False(t, held)
}

func staleLockOf(t *testing.T, eng *targettest.Engine) string {
	t.Helper()
	ins, err := eng.ContainerInspect(context.Background(), driver.LockName("web"))
	require.NoError(t, err)
	return staleLock(context.Background(), eng, ins)
}

func TestRecoverLock(t *testing.T) {
	tests := []struct {
		name      string
		holder    int64
		job       int64
		recoverEr error
		recovered bool
		released  bool
		wantErr   string
	}{
		{name: "the job's own lock", holder: 5, job: 5, recovered: true, released: true},
		{name: "another job's lock", holder: 6, job: 5},
		{name: "no lock", job: 5},
		{name: "recover fails: the lock stays", holder: 5, job: 5, recoverEr: errors.New("cannot"), recovered: true, wantErr: "cannot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := targettest.New()
			ctx := context.Background()
			if tt.holder != 0 {
				_, err := EngineLock(ctx, eng, &bytes.Buffer{}, "web", "web", driver.Holder{Job: tt.holder, Deadline: time.Now().Add(time.Hour)}, time.Second)
				require.NoError(t, err)
			}
			recovered := false
			err := RecoverLock(ctx, eng, "web", tt.job, func(context.Context) error { recovered = true; return tt.recoverEr })
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tt.recovered, recovered)
			_, held := eng.Get(driver.LockName("web"))
			assert.Equal(t, tt.holder != 0 && !tt.released, held)
		})
	}
}

func TestPullOnTarget(t *testing.T) {
	tests := []struct {
		name      string
		present   bool
		pullErr   string
		fails     int
		wantErr   string
		wantPulls int
	}{
		{name: "present: no pull", present: true},
		{name: "pulled", wantPulls: 1},
		{name: "an outage is retried", fails: 1, wantPulls: 2},
		{name: "a refusal is not", pullErr: "manifest unknown", wantPulls: 1, wantErr: "on the target: manifest unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := targettest.New()
			ref := "reg.example/app@sha256:" + strings.Repeat("1", 64)
			if tt.present {
				eng.AddImage(ref)
			}
			pulls := 0
			eng.Fail = func(m, _ string) error {
				if m != "ImagePull" {
					return nil
				}
				pulls++
				if pulls <= tt.fails {
					return errors.New("dial tcp 10.0.0.1:2376: connect: connection refused")
				}
				return nil
			}
			if tt.pullErr != "" {
				eng.PullError = func(string) string { return tt.pullErr }
			}
			var out bytes.Buffer
			err := PullOnTarget(context.Background(), eng, &Credentials{}, &out, ref)
			assert.Equal(t, tt.wantPulls, pulls)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
				return
			}
			require.NoError(t, err, out.String())
			assert.True(t, eng.HasImage(ref))
			if tt.fails > 0 {
				assert.Contains(t, out.String(), "pull on the target failed")
			}
		})
	}
}
