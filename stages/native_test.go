package stages

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/settings"
)

func nativeFor(overrides []string, vars ...api.Variable) *Native {
	s := settings.Defaults()
	s.Build.Args = map[string]string{"GO": "1.22"}
	s.Build.JobOverrides = overrides
	job := executor.NewJob(&api.JobResponse{ID: 1, GitInfo: api.GitInfo{Ref: "master", Sha: "abc123"}, Variables: vars})
	return &Native{Settings: &s, Job: job, ProjectDir: "/builds/1/app"}
}

func TestBuildOptionsJobOverrides(t *testing.T) {
	v := func(k, val string) api.Variable { return api.Variable{Key: k, Value: val} }
	tests := []struct {
		name      string
		overrides []string
		vars      []api.Variable
		wantErr   string
		check     func(t *testing.T, o BuildOptions)
	}{
		{name: "the TOML alone", check: func(t *testing.T, o BuildOptions) {
			assert.Equal(t, "/builds/1/app", o.Dir)
			assert.Equal(t, "Dockerfile", o.Dockerfile)
			assert.Equal(t, map[string]string{"GO": "1.22"}, o.Args)
			assert.Equal(t, "abc123", o.Labels[LabelRevision])
			assert.Equal(t, "master", o.Labels[LabelVersion])
			assert.NotEmpty(t, o.Labels[LabelCreated])
		}},
		{name: "allowed overrides", overrides: []string{"dockerfile", "context", "args.GO"},
			vars: []api.Variable{v("BERTH_DOCKERFILE", "build/Dockerfile"), v("BERTH_CONTEXT", "svc"), v("BERTH_BUILD_ARG_GO", "1.23")},
			check: func(t *testing.T, o BuildOptions) {
				assert.Equal(t, "/builds/1/app/svc", o.Dir)
				assert.Equal(t, "build/Dockerfile", o.Dockerfile)
				assert.Equal(t, "1.23", o.Args["GO"])
			}},
		{name: "a build arg the TOML does not allow", overrides: []string{"args.GO"}, vars: []api.Variable{v("BERTH_BUILD_ARG_TOKEN", "x")}, wantErr: "does not let jobs change args.TOKEN"},
		{name: "a Dockerfile the TOML does not allow", vars: []api.Variable{v("BERTH_DOCKERFILE", "evil")}, wantErr: "does not let jobs change dockerfile"},
		{name: "a context outside the sources", overrides: []string{"context"}, vars: []api.Variable{v("BERTH_CONTEXT", "../../etc")}, wantErr: "inside the build context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := nativeFor(tt.overrides, tt.vars...).buildOptions("reg/app:latest")
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, executor.BuildFailure, executor.ClassOf(err))
				return
			}
			require.NoError(t, err)
			tt.check(t, o)
		})
	}
}

func TestGates(t *testing.T) {
	v := func(k, val string) api.Variable { return api.Variable{Key: k, Value: val} }
	n := nativeFor(nil)
	assert.ErrorContains(t, n.gates("prod"), "only from a manual job")
	n = nativeFor(nil, v("CI_JOB_MANUAL", "true"))
	assert.ErrorContains(t, n.gates("prod"), "only from protected refs")
	n = nativeFor(nil, v("CI_JOB_MANUAL", "true"), v("CI_COMMIT_REF_PROTECTED", "true"))
	assert.NoError(t, n.gates("prod"))
	assert.NoError(t, nativeFor(nil).gates("web"))
}
