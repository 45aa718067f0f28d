package driver

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
)

func TestLabelsRoundTrip(t *testing.T) {
	e := Entry{Time: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Image: "reg/app@sha256:ab", Digest: "sha256:ab", Tag: "v1",
		Ref: "main", Pipeline: 7, Job: 42, By: "alice", Flow: "main"}
	l := Labels("web", e)
	assert.Equal(t, "web", l[LabelEnv])
	assert.Equal(t, "42", l[LabelJob])
	back := EntryOfLabels(l, ResultServing)
	e.Result = ResultServing
	assert.Equal(t, e, back)

	for _, k := range []string{LabelEnv, LabelRef, LabelTag, LabelDigest, LabelImage, LabelPipeline, LabelJob, LabelBy, LabelDeployed, LabelFlow} {
		assert.Contains(t, LabelKeys(), k, "a restore puts %s back", k)
	}
}

func TestEntryOfLabelsReadsWhatEarlierBerthsWrote(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		job    int64
		zero   bool
	}{
		{"legacy job key", map[string]string{"berth.job": "9"}, 9, true},
		{"the job key wins", map[string]string{"berth.job": "9", LabelJob: "10"}, 10, true},
		{"nothing", map[string]string{}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := EntryOfLabels(tt.labels, "")
			assert.Equal(t, tt.job, e.Job)
			assert.Equal(t, tt.zero, e.Time.IsZero())
		})
	}
	assert.NotContains(t, Labels("web", Entry{}), LabelDeployed, "no time, no deployed label")
}

func TestEntries(t *testing.T) {
	r := Release{Env: "web", Image: "i", Digest: "d", Tag: "t", Ref: "r", Sha: "s", Pipeline: 1, Job: 2, By: "b", Project: "p", Flow: "f"}
	e := EntryOf(r, "id", ResultServing)
	assert.Equal(t, Entry{ID: "id", Time: e.Time, Image: "i", Digest: "d", Tag: "t", Ref: "r", Sha: "s", Pipeline: 1, Job: 2, By: "b",
		Project: "p", Flow: "f", Result: ResultServing}, e)
	assert.WithinDuration(t, time.Now(), e.Time, time.Minute)
	rec := Entry{Result: ResultReplaced, Adopted: true}.Record()
	assert.Equal(t, "replaced (adopted: started by hand)", rec.Result)
	assert.Equal(t, "rolled back by bob", RolledBackBy("bob"))
}

func TestLockLabelsRoundTrip(t *testing.T) {
	h := Holder{Job: 4, Pipeline: 3, By: "alice", Deadline: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Host: "boot", PID: 99}
	l := LockLabels("web", "key", h, time.Now())
	assert.Equal(t, "web", l[LabelLockEnv])
	assert.Equal(t, "key", l[LabelLockKey])
	assert.Equal(t, h, HolderOfLabels(l))
	assert.Equal(t, "job 4 of pipeline 3 (alice)", h.String())
}

func TestHolderGone(t *testing.T) {
	now := time.Now()
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	tests := []struct {
		name   string
		holder Holder
		want   string
	}{
		{"alive", Holder{Deadline: now.Add(time.Hour), Host: BootID(), PID: os.Getpid()}, ""},
		{"past its deadline", Holder{Deadline: now.Add(-time.Hour)}, "its job is over since"},
		{"its berth ended on this host", Holder{Deadline: now.Add(time.Hour), Host: BootID(), PID: dead.Process.Pid}, "is gone"},
		{"another host's pid says nothing", Holder{Deadline: now.Add(time.Hour), Host: "elsewhere", PID: dead.Process.Pid}, ""},
		{"no deadline recorded", Holder{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.holder.Gone(now)
			if tt.want == "" {
				assert.Empty(t, got)
			} else {
				assert.Contains(t, got, tt.want)
			}
		})
	}
	assert.NotEmpty(t, BootID())
	me := Holder{}.ThisProcess()
	assert.Equal(t, os.Getpid(), me.PID)
	assert.False(t, ProcessGone(0), "no pid recorded is not gone")
	assert.Equal(t, "berth-lock-web", LockName("web"))
}

// fakeLock is a lock whose state a test script moves on at each call.
type fakeLock struct {
	held      bool
	state     LockState
	releaseAt int // Look reports gone at this call
	looks     int
	takenOver bool
	err       error
}

func (f *fakeLock) ops() LockOps {
	return LockOps{
		Take: func(context.Context) (bool, error) {
			if f.err != nil {
				return false, f.err
			}
			if f.held {
				return false, nil
			}
			f.held = true
			return true, nil
		},
		Look: func(context.Context) (LockState, bool, error) {
			f.looks++
			if f.releaseAt > 0 && f.looks >= f.releaseAt {
				f.held = false
				return LockState{}, true, nil
			}
			return f.state, false, nil
		},
		TakeOver: func(context.Context) (bool, error) {
			f.held, f.takenOver = false, true
			return true, nil
		},
	}
}

func TestWaitLock(t *testing.T) {
	tests := []struct {
		name      string
		lock      fakeLock
		timeout   time.Duration
		cancel    bool
		wantErr   string
		wantClass failure.Class
		wantSaid  string
	}{
		{name: "free", timeout: time.Second},
		{name: "released while waiting", lock: fakeLock{held: true, state: LockState{Holder: "job 1", Since: "then"}, releaseAt: 2}, timeout: 5 * time.Second,
			wantSaid: "waiting for web: job 1 deploys it since then"},
		{name: "stale holder taken over", lock: fakeLock{held: true, state: LockState{Holder: "job 1", Stale: "its job is over"}}, timeout: time.Second,
			wantSaid: "taking over the lock of web from job 1: its job is over"},
		{name: "held past the timeout", lock: fakeLock{held: true, state: LockState{Holder: "job 1"}}, timeout: 10 * time.Millisecond,
			wantErr: "web is still locked by job 1 after 10ms", wantClass: failure.BuildFailure},
		{name: "cancelled", lock: fakeLock{held: true, state: LockState{Holder: "job 1"}}, timeout: time.Minute, cancel: true,
			wantErr: "cancelled while waiting for the lock of web", wantClass: failure.BuildFailure},
		{name: "the target fails", lock: fakeLock{err: failure.Systemf("engine down")}, timeout: time.Second,
			wantErr: "engine down", wantClass: failure.SystemFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(20*time.Millisecond, cancel)
			}
			var out bytes.Buffer
			err := WaitLock(ctx, tt.lock.ops(), &out, "web", tt.timeout)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, tt.wantClass, failure.ClassOf(err))
			} else {
				require.NoError(t, err)
				assert.True(t, tt.lock.held, "taken")
			}
			assert.Contains(t, out.String(), tt.wantSaid)
			assert.LessOrEqual(t, strings.Count(out.String(), "waiting for"), 1, "told once")
		})
	}
}

func TestChooseRollback(t *testing.T) {
	cands := []RollbackCandidate{
		{Tag: "v4", Digest: "sha256:4", Image: "r@sha256:4", Current: true},
		{Tag: "v3", Digest: "sha256:3", Image: "r@sha256:3", Failed: true},
		{Tag: "v2", Digest: "sha256:2", Image: "r@sha256:2"},
		{Tag: "v1", Digest: "sha256:1", Image: "r@sha256:1"},
	}
	tests := []struct {
		to   string
		want int
		ok   bool
	}{
		{"", 2, true},
		{"v1", 3, true},
		{"sha256:1", 3, true},
		{"v3", 0, false}, // never served
		{"v4", 0, false}, // serves already
		{"v9", 0, false},
	}
	for _, tt := range tests {
		t.Run("to "+tt.to, func(t *testing.T) {
			i, ok := ChooseRollback(cands, tt.to)
			assert.Equal(t, tt.ok, ok)
			if ok {
				assert.Equal(t, tt.want, i)
			}
		})
	}
	// by image pin: a candidate recorded without its digest
	i, ok := ChooseRollback([]RollbackCandidate{{Image: "r@sha256:77"}}, "sha256:77")
	assert.True(t, ok)
	assert.Equal(t, 0, i)
}

func TestChooseEntry(t *testing.T) {
	entries := []Entry{
		{Tag: "v3", Image: "r@3", Result: ResultServing},
		{Tag: "v2b", Image: "r@3", Result: ResultReplaced}, // the same image as serves
		{Tag: "x", Image: "r@x", Result: ResultInterrupted},
		{Tag: "v1", Image: "r@1", Result: ResultReplaced},
	}
	i, ok := ChooseEntry(entries, "r@3", "")
	require.True(t, ok)
	assert.Equal(t, "v1", entries[i].Tag)
	_, ok = ChooseEntry(entries, "r@3", "x")
	assert.False(t, ok, "an interrupted version never served")
}

func TestStepsUndoWhatWasDoneLastFirst(t *testing.T) {
	var log []string
	step := func(name string, fail bool) Step {
		return Step{Name: name,
			Do: func(context.Context) error {
				log = append(log, "do "+name)
				if fail {
					return errors.New(name + " broke")
				}
				return nil
			},
			Undo: func(context.Context) error { log = append(log, "undo "+name); return nil }}
	}
	var paused []string
	s := Steps{What: "deploy of web", Pause: func(_ context.Context, at string) { paused = append(paused, at) }}
	err := s.Run(context.Background(), []Step{step("a", false), {Name: "journal", Do: func(context.Context) error { return nil }}, step("b", false), step("c", true)})
	var se *StepError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "c", se.Step)
	assert.False(t, se.Cancelled)
	assert.NoError(t, se.UndoErr)
	assert.Equal(t, "c broke", err.Error())
	assert.Equal(t, []string{"do a", "do b", "do c", "undo c", "undo b", "undo a"}, log, "the failed step's undo runs too")
	assert.Equal(t, []string{"a", "journal", "b", "c"}, paused)

	log = nil
	require.NoError(t, s.Run(context.Background(), []Step{step("a", false)}))
	assert.Equal(t, []string{"do a"}, log)
}

func TestStepsCancelledAndUndoFailures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	undone := false
	s := Steps{What: "deploy of web", Out: &out, UndoTimeout: time.Second}
	err := s.Run(ctx, []Step{
		{Name: "stop-old", Do: func(context.Context) error { return nil },
			Undo: func(uctx context.Context) error {
				undone = uctx.Err() == nil // undos are not cut short by the job's cancel
				return errors.New("old will not start")
			}},
		{Name: "rename", Do: func(context.Context) error { cancel(); return nil }},
		{Name: "start-new", Do: func(context.Context) error { return nil }},
	})
	var se *StepError
	require.ErrorAs(t, err, &se)
	assert.True(t, se.Cancelled)
	assert.Equal(t, "cancelled at step start-new of the deploy of web", err.Error())
	assert.True(t, undone)
	require.Error(t, se.UndoErr)
	assert.Contains(t, se.UndoErr.Error(), "undo stop-old: old will not start")
	assert.Equal(t, "berth: warning: could not undo stop-old of the deploy of web: old will not start\n", out.String())
	assert.ErrorIs(t, se, se.Err)

	// cancelled before a step starts: it does not run
	ran := false
	err = Steps{What: "x"}.Run(ctx, []Step{{Name: "a", Do: func(context.Context) error { ran = true; return nil }}})
	require.ErrorAs(t, err, &se)
	assert.False(t, ran)
}

func TestRetry(t *testing.T) {
	tests := []struct {
		name     string
		errs     []error
		wantErr  string
		wantRuns int
	}{
		{"first time", []error{nil}, "", 1},
		{"after an outage", []error{errors.New("connection refused"), nil}, "", 2},
		{"gives up", []error{errors.New("refused"), errors.New("refused"), errors.New("refused")}, "refused", 3},
		{"no retry of a refusal", []error{errors.New("401 unauthorized")}, "unauthorized", 1},
		{"no retry of a permanent one", []error{Permanent{Err: errors.New("bad")}}, "bad", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			var slept []time.Duration
			runs := 0
			err := Retry(context.Background(), 2, func(d time.Duration) { slept = append(slept, d) }, &out, "push failed", func() error {
				err := tt.errs[runs]
				runs++
				return err
			})
			assert.Equal(t, tt.wantRuns, runs)
			if tt.wantErr == "" {
				assert.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.Equal(t, tt.wantErr, strings.TrimPrefix(err.Error(), "401 "))
				var p Permanent
				assert.False(t, errors.As(err, &p), "the mark is gone")
			}
			assert.Len(t, slept, runs-1)
			if runs == 3 {
				assert.Equal(t, []time.Duration{500 * time.Millisecond, time.Second}, slept)
				assert.Contains(t, out.String(), "berth:   push failed (refused), retry 2/2 in 1s")
			}
		})
	}
}

func TestAnswers(t *testing.T) {
	tests := []struct {
		err   error
		class string
		want  failure.Class
	}{
		{failure.Buildf("unhealthy"), ClassBuild, failure.BuildFailure},
		{failure.Systemf("no engine"), ClassSystem, failure.SystemFailure},
		{errors.New("unclassified"), ClassSystem, failure.SystemFailure},
	}
	for _, tt := range tests {
		a := AnswerOf(tt.err)
		assert.Equal(t, tt.class, a.Class)
		assert.Equal(t, tt.err.Error(), a.Error)
		assert.Equal(t, tt.want, failure.ClassOf(a.Err()))
	}
	assert.Equal(t, Answer{}, AnswerOf(nil))
	assert.NoError(t, Answer{}.Err())
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(Answer{Error: "bad file", Class: ClassInvalid}.Err()))
	var b bytes.Buffer
	require.NoError(t, Reply(&b, struct {
		Answer
		N int `json:"n"`
	}{Answer{Error: "x", Class: ClassBuild}, 3}))
	assert.JSONEq(t, `{"error":"x","class":"build","n":3}`, b.String(), "the envelope is flat on the wire")
}

func TestHelperEnvKeepsNoJobVariable(t *testing.T) {
	got := HelperEnv([]string{"PATH=/bin", "DOCKER_HOST=unix:///x", "KUBECONFIG=/k", "CUSTOM_ENV_CI_JOB_TOKEN=secret",
		"JOB_RESPONSE_FILE=/tmp/job.json", PauseAtEnv + "=deploy:up"})
	assert.Equal(t, []string{"PATH=/bin", "DOCKER_HOST=unix:///x", "KUBECONFIG=/k", PauseAtEnv + "=deploy:up"}, got)
}

func TestPauseFromEnv(t *testing.T) {
	assert.Nil(t, PauseFromEnv(func(string) string { return "" }, nil), "off unless both are set")
	file := filepath.Join(t.TempDir(), "pause")
	env := map[string]string{PauseAtEnv: "deploy:stop-old", PauseFileEnv: file}
	var out bytes.Buffer
	pause := PauseFromEnv(func(k string) string { return env[k] }, &out)
	require.NotNil(t, pause)
	pause(context.Background(), "deploy:create") // another step: no wait
	assert.Empty(t, out.String())
	go func() {
		for {
			if _, err := os.Stat(file); err == nil {
				_ = os.Remove(file) // the test lets it go on
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	pause(context.Background(), "deploy:stop-old")
	assert.Equal(t, "berth: test hook: pausing at deploy:stop-old\n", out.String())
}
