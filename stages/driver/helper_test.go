package driver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
)

// fakeHelper writes a helper binary that runs script (sh): what a driver's
// helper does with berth's request, without the driver.
func fakeHelper(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "berth-fake")
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755))
	return p
}

type fakeAnswer struct {
	Answer
	Got string `json:"got,omitempty"`
}

func TestRunHelper(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	t.Setenv("CUSTOM_ENV_CI_JOB_TOKEN", "job-token-123")
	tests := []struct {
		name      string
		script    string
		cancel    time.Duration
		grace     time.Duration
		wantGot   string
		wantErr   string
		wantClass failure.Class
		wantLog   string
		wantAns   string
	}{
		{name: "answers", script: fmt.Sprintf(`env > %s; read req; echo "berth: working" >&2; echo "{\"got\":$(echo "$req" | sed 's/"/\\"/g' | sed 's/^/"/;s/$/"/' | tr -d '\n')}"`, envFile),
			wantGot: `{"op":"deploy"}`, wantLog: "berth: working\n"},
		{name: "answers a failure", script: `cat >/dev/null; echo '{"error":"rollout stuck","class":"build"}'`, wantAns: "rollout stuck"},
		{name: "dies without an answer", script: `cat >/dev/null; echo "panic: boom" >&2; exit 2`,
			wantErr: "berth-fake failed (exit status 2) without an answer: see the lines above", wantClass: failure.SystemFailure, wantLog: "panic: boom\n"},
		{name: "cancelled: TERM, and it answers", script: `trap 'echo "{\"error\":\"cancelled, previous restored\",\"class\":\"build\"}"; exit 0' TERM; cat >/dev/null; while :; do sleep 0.05; done`,
			cancel: 100 * time.Millisecond, grace: 10 * time.Second, wantAns: "cancelled, previous restored"},
		{name: "cancelled: KILL after the grace", script: `trap '' TERM; cat >/dev/null; while :; do sleep 0.05; done`,
			cancel: 50 * time.Millisecond, grace: 100 * time.Millisecond, wantErr: "without an answer", wantClass: failure.SystemFailure},
		{name: "not there", wantErr: "start", wantClass: failure.SystemFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "missing")
			if tt.script != "" {
				path = fakeHelper(t, tt.script)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel > 0 {
				time.AfterFunc(tt.cancel, cancel)
			}
			var log bytes.Buffer
			var ans fakeAnswer
			err := RunHelper(ctx, path, map[string]string{"op": "deploy"}, &ans, &log, tt.grace)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, tt.wantClass, failure.ClassOf(err))
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tt.wantGot, ans.Got)
			assert.Equal(t, tt.wantAns, ans.Error)
			assert.Equal(t, tt.wantLog, log.String())
		})
	}
	env, err := os.ReadFile(envFile)
	require.NoError(t, err)
	assert.NotContains(t, string(env), "job-token-123", "the helper never gets the job's variables")
}

func TestFindHelper(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "berth-fake-on-path"), []byte("#!/bin/sh\n"), 0o755))
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	p, err := FindHelper("berth-fake-on-path")
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "berth-fake-on-path"), p)
	_, err = FindHelper("berth-no-such-helper")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "berth-no-such-helper is needed next to berth or on PATH (make build builds it)")
	assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
}
