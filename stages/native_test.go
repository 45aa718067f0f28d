package stages

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

func nativeFor(t *testing.T, overrides []string, vars ...api.Variable) *Native {
	s := settings.Defaults()
	s.Build.Args = map[string]string{"GO": "1.22"}
	s.Build.JobOverrides = overrides
	job := executor.NewJob(&api.JobResponse{ID: 1, GitInfo: api.GitInfo{Ref: "master", Sha: "abc123"}, Variables: vars})
	dir := sourceDir(t, map[string]string{"Dockerfile": "FROM scratch\n", "build/Dockerfile": "FROM scratch\n", "svc/build/Dockerfile": "FROM scratch\n"})
	return &Native{Settings: &s, Job: job, ProjectDir: dir}
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
			assert.NotEmpty(t, o.Dir)
			assert.Equal(t, "Dockerfile", o.Dockerfile)
			assert.Equal(t, map[string]string{"GO": "1.22"}, o.Args)
			assert.Equal(t, "abc123", o.Labels[LabelRevision])
			assert.Equal(t, "master", o.Labels[LabelVersion])
			assert.NotEmpty(t, o.Labels[LabelCreated])
		}},
		{name: "allowed overrides", overrides: []string{"dockerfile", "context", "args.GO"},
			vars: []api.Variable{v("BERTH_DOCKERFILE", "build/Dockerfile"), v("BERTH_CONTEXT", "svc"), v("BERTH_BUILD_ARG_GO", "1.23")},
			check: func(t *testing.T, o BuildOptions) {
				assert.True(t, strings.HasSuffix(o.Dir, "/svc"), o.Dir)
				assert.Equal(t, "build/Dockerfile", o.Dockerfile)
				assert.Equal(t, "1.23", o.Args["GO"])
			}},
		{name: "a build arg the TOML does not allow", overrides: []string{"args.GO"}, vars: []api.Variable{v("BERTH_BUILD_ARG_TOKEN", "x")}, wantErr: "does not let jobs change args.TOKEN"},
		{name: "a Dockerfile the TOML does not allow", vars: []api.Variable{v("BERTH_DOCKERFILE", "evil")}, wantErr: "does not let jobs change dockerfile"},
		{name: "a context outside the sources", overrides: []string{"context"}, vars: []api.Variable{v("BERTH_CONTEXT", "../../etc")}, wantErr: "must be a path inside"},
		{name: "a context that is a link out of the sources", overrides: []string{"context"}, vars: []api.Variable{v("BERTH_CONTEXT", "out")}, wantErr: "through a symlink"},
		{name: "a Dockerfile that is a link out of the sources", overrides: []string{"dockerfile"}, vars: []api.Variable{v("BERTH_DOCKERFILE", "passwd")}, wantErr: "through a symlink"},
		{name: "a masked build arg", overrides: []string{"args.TOKEN"}, vars: []api.Variable{{Key: "BERTH_BUILD_ARG_TOKEN", Value: "s3cret", Masked: true}}, wantErr: "masked variable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := nativeFor(t, tt.overrides, tt.vars...)
			require.NoError(t, os.Symlink("/etc", filepath.Join(n.ProjectDir, "out")))
			require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(n.ProjectDir, "passwd")))
			o, err := n.buildOptions("reg/app:latest")
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
				return
			}
			require.NoError(t, err)
			tt.check(t, o)
		})
	}
}

func TestGates(t *testing.T) {
	v := func(k, val string) api.Variable { return api.Variable{Key: k, Value: val} }
	protected := func(n *Native, p bool) *Native { n.Job.Protected, n.Job.ProtectedKnown = p, true; return n }
	// a job's own variables open no gate: protection is git_info.protected
	n := nativeFor(t, nil, v("CI_JOB_MANUAL", "true"), v("CI_COMMIT_REF_PROTECTED", "true"))
	assert.ErrorContains(t, n.gates("prod"), "GitLab did not say whether master is")
	assert.ErrorContains(t, protected(n, false).gates("prod"), "only from protected refs, and master is not protected")
	assert.ErrorContains(t, protected(nativeFor(t, nil), true).gates("prod"), "only from a manual job")
	assert.NoError(t, protected(nativeFor(t, nil, v("CI_JOB_MANUAL", "true")), true).gates("prod"))
	assert.NoError(t, nativeFor(t, nil).gates("web"))
}

func TestBerthActionIsRollbackInDeployStagesOnly(t *testing.T) {
	v := func(k, val string) api.Variable { return api.Variable{Key: k, Value: val} }
	n := nativeFor(t, nil, v("BERTH_ACTION", "deploy-everything"))
	n.Plan = Plan{Action: settings.ActionDeploy}
	_, err := n.wantsRollback()
	assert.ErrorContains(t, err, `BERTH_ACTION="deploy-everything" is not an action`)
	n = nativeFor(t, nil, v("BERTH_ACTION", "rollback"))
	n.Plan = Plan{Action: settings.ActionRelease}
	_, err = n.wantsRollback()
	assert.ErrorContains(t, err, "works in deploy stages only")
	n.Plan = Plan{Action: settings.ActionDeploy}
	rb, err := n.wantsRollback()
	assert.NoError(t, err)
	assert.True(t, rb)
}

func TestRepositoryComesFromTheOperatorOrThePayload(t *testing.T) {
	v := func(k, val string) api.Variable { return api.Variable{Key: k, Value: val} }
	n := nativeFor(t, nil, v("CI_REGISTRY_IMAGE", "alpine"), v("CI_REGISTRY", "evil.example.com"))
	n.Job.Project = "Group/App"
	_, err := n.repository()
	assert.ErrorContains(t, err, "no image repository", "a job's CI_REGISTRY_IMAGE never counts")
	n.Job.Credentials = []api.Credentials{{Type: "registry", URL: "registry.example.com", Username: "gitlab-ci-token", Password: "t"}}
	repo, err := n.repository()
	require.NoError(t, err)
	assert.Equal(t, "registry.example.com/group/app", repo)
	n.Settings.Registry.Image = "127.0.0.1:5000/{project}"
	repo, err = n.repository()
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:5000/group/app", repo)
}
