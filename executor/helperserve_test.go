package executor

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// helperServer serves stages as `berth helper` does in the helper
// container, here in the test's process, and an executor that sends them.
func helperServer(t *testing.T) (*Executor, *bytes.Buffer, *bytes.Buffer) {
	return helperServerIn(t, t.TempDir())
}

func helperServerIn(t *testing.T, buildsDir string) (*Executor, *bytes.Buffer, *bytes.Buffer) {
	s := settings.Defaults()
	s.BuildsDir = buildsDir
	s.Job.StopGrace = settings.Duration(2 * time.Second)
	job := NewJob(&api.JobResponse{ID: 7})
	dir := JobDir(&s, job)
	require.NoError(t, os.MkdirAll(HelperSocketDir(dir), 0o755))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = ServeHelper(ctx, HelperSocket(dir), dir) }()
	var out, errOut, log bytes.Buffer
	l := logrus.New()
	l.SetOutput(&log)
	e := New(nil, &s, job, &log, l, "test")
	e.ScriptOut, e.ScriptErr = &out, &errOut
	return e, &out, &errOut
}

// A socket path longer than a unix address holds (a deep builds_dir) is
// reached through its directory's descriptor, on both sides.
func TestHelperServesInADeepBuildsDir(t *testing.T) {
	deep := filepath.Join(t.TempDir(), strings.Repeat("a-long-directory-name/", 5))
	e, out, _ := helperServerIn(t, deep)
	require.Greater(t, len(HelperSocket(JobDir(e.Settings, e.Job))), maxSocketPath)
	require.NoError(t, e.runViaHelper(context.Background(), strings.NewReader("echo deep"), "get_sources"))
	assert.Equal(t, "deep\n", out.String())
}

func TestHelperServesStages(t *testing.T) {
	e, out, errOut := helperServer(t)
	tests := []struct {
		script, out, err string
		code             int
	}{
		{script: "echo hello; echo oops >&2; pwd", out: "hello\n" + JobDir(e.Settings, e.Job) + "\n", err: "oops\n"},
		{script: "echo before; exit 3", out: "before\n", code: 3},
		{script: "kill -KILL $$", code: 137},
		{script: strings.Repeat("echo a line of the output\n", 5000), out: strings.Repeat("a line of the output\n", 5000)},
	}
	for _, tt := range tests {
		out.Reset()
		errOut.Reset()
		err := e.runViaHelper(context.Background(), strings.NewReader(tt.script), "get_sources")
		if tt.code == 0 {
			require.NoError(t, err)
		} else {
			var se *ScriptExit
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.code, se.Code)
		}
		assert.Equal(t, tt.out, out.String())
		assert.Equal(t, tt.err, errOut.String())
	}
}

func TestHelperStageIsStoppedOnCancel(t *testing.T) {
	e, out, _ := helperServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(300 * time.Millisecond); cancel() }()
	t0 := time.Now()
	err := e.runViaHelper(ctx, strings.NewReader(`trap 'echo got TERM; exit 143' TERM; echo started; sleep 30 & wait`), "archive_cache")
	assert.ErrorIs(t, err, errCancelled)
	assert.Less(t, time.Since(t0), 5*time.Second)
	assert.Eventually(t, func() bool { return strings.Contains(out.String(), "got TERM") }, 2*time.Second, 20*time.Millisecond)
}

func TestHelperThatIsGoneIsASystemFailure(t *testing.T) {
	s := settings.Defaults()
	s.BuildsDir = t.TempDir()
	e := New(nil, &s, NewJob(&api.JobResponse{ID: 8}), &bytes.Buffer{}, logrus.New(), "test")
	err := e.runViaHelper(context.Background(), strings.NewReader("true"), "get_sources")
	require.Error(t, err)
	assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "reach the helper container for get_sources")
}
