package executor

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

func TestRoute(t *testing.T) {
	tests := map[string]Place{
		"prepare_script": InHelper, "get_sources": InHelper, "clear_worktree": InHelper,
		"restore_cache": InHelper, "download_artifacts": InHelper,
		"build_script": InContainer, "step_script": InContainer, "step_release": InContainer,
		"after_script": InContainer, "archive_cache": InHelper, "archive_cache_on_failure": InHelper,
		"upload_artifacts_on_success": InHelper, "upload_artifacts_on_failure": InHelper,
		"cleanup_file_variables": InHelper,
	}
	for stage, want := range tests {
		assert.Equal(t, want, Route(stage), stage)
	}
}

func TestServiceAliases(t *testing.T) {
	tests := []struct {
		svc  api.Image
		want []string
	}{
		{api.Image{Name: "web:local"}, []string{"web"}},
		{api.Image{Name: "web:local", Alias: "app"}, []string{"app", "web"}},
		{api.Image{Name: "postgres:16", Alias: "db, pg"}, []string{"db", "pg", "postgres"}},
		{api.Image{Name: "registry.example.com/group/tool:1"}, []string{"registry.example.com__group__tool", "registry.example.com-group-tool"}},
		{api.Image{Name: "127.0.0.1:5000/app@sha256:" + fmt.Sprintf("%064d", 0)}, []string{"127.0.0.1:5000__app", "127.0.0.1:5000-app"}},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, ServiceAliases(tt.svc), tt.svc.Name)
	}
}

func TestRedactor(t *testing.T) {
	r := NewRedactor([]string{"glcbt-abcdef", "s3cret-longer", "s3cret", "abc", ""})
	assert.Equal(t, "token [MASKED] pw [MASKED] [MASKED]! abc", r.String("token glcbt-abcdef pw s3cret-longer s3cret! abc"))
	var nilR *Redactor
	assert.Equal(t, "x", nilR.String("x"))
}

// A script's own exit code is a build failure, wrapped or not.
func TestScriptExitIsABuildFailure(t *testing.T) {
	codes := failure.ExitCodes{Build: 11, System: 22}
	assert.Equal(t, 11, codes.For(fmt.Errorf("wrapped: %w", failure.Build(&ScriptExit{Code: 42}))))
}

func TestBuildExitCodeFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "code")
	require.NoError(t, TruncateBuildExitCode(f), "a missing file is fine")
	require.NoError(t, WriteBuildExitCode(f, 42))
	b, _ := os.ReadFile(f)
	assert.Equal(t, "42", string(b))
	require.NoError(t, TruncateBuildExitCode(f))
	b, _ = os.ReadFile(f)
	assert.Empty(t, b)
}

func TestLoadJob(t *testing.T) {
	dir := t.TempDir()
	payload := `{"id": 77, "token": "glcbt-xyz123", "job_info": {"name": "unit", "stage": "test", "pipeline_id": 5, "project_full_path": "g/app"},
	  "git_info": {"ref": "develop", "ref_type": "branch", "sha": "abc"}, "runner_info": {"timeout": 120},
	  "variables": [{"key": "A", "value": "1"}, {"key": "PW", "value": "hunter22", "masked": true}, {"key": "A", "value": "2"}],
	  "credentials": [{"type": "registry", "url": "127.0.0.1:5000", "username": "u", "password": "regpass"}],
	  "image": {"name": "busybox:local"}}`
	f := filepath.Join(dir, "job.json")
	require.NoError(t, os.WriteFile(f, []byte(payload), 0o600))
	j, err := LoadJob(f)
	require.NoError(t, err)
	assert.Equal(t, int64(77), j.ID)
	assert.Equal(t, "develop", j.Ref)
	assert.Equal(t, 2*time.Minute, j.Timeout)
	v, _ := j.Var("A")
	assert.Equal(t, "2", v, "the last definition wins")
	assert.ElementsMatch(t, []string{"glcbt-xyz123", "regpass", "hunter22"}, j.Secrets())

	_, err = LoadJob("")
	assert.ErrorContains(t, err, "JOB_RESPONSE_FILE is not set")
	assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
	require.NoError(t, os.WriteFile(f, []byte("{"), 0o600))
	_, err = LoadJob(f)
	assert.ErrorContains(t, err, "not valid JSON")
}

func TestConfigFor(t *testing.T) {
	s := settings.Defaults()
	out := ConfigFor(&s, &Job{ID: 9}, "1.2.3", "host1")
	assert.Equal(t, "/var/lib/berth/builds/9", out.BuildsDir, "each job gets its own builds dir")
	assert.False(t, out.BuildsDirIsShared)
	assert.Equal(t, "bash", out.Shell)
	assert.Equal(t, api.Driver{Name: "berth", Version: "1.2.3"}, out.Driver)
}

func TestRemoveJobDirRefusesOutsideBuildsDir(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{root, filepath.Join(root, ".."), "/etc"} {
		assert.Error(t, removeJobDir(root, d), d)
	}
	job := filepath.Join(root, "5")
	require.NoError(t, os.MkdirAll(filepath.Join(job, "p"), 0o755))
	require.NoError(t, removeJobDir(root, job))
	assert.NoDirExists(t, job)
}

func TestPullPolicy(t *testing.T) {
	s := settings.Defaults()
	e := &Executor{Settings: &s}
	tests := []struct {
		asked   []string
		want    string
		wantErr string
	}{
		{nil, settings.PullIfNotPresent, ""},
		{[]string{"always"}, "always", ""},
		{[]string{"never", "if-not-present"}, "if-not-present", ""},
		{[]string{"never"}, "", "allows only"},
	}
	for _, tt := range tests {
		got, err := e.pullPolicy("img", tt.asked)
		if tt.wantErr != "" {
			assert.ErrorContains(t, err, tt.wantErr)
			assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tt.want, got)
	}
}
