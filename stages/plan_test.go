package stages

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// The flows of DEVELOPERS.md, for every stage.
func TestPlanForDefaults(t *testing.T) {
	s := settings.Defaults()
	tests := []struct {
		stage, refType, ref string
		action, tag, env    string
		noFlow              bool
	}{
		{"style", "branch", "develop", "script", "", "", true},
		{"test", "branch", "feature/login", "script", "", "", true},
		{"lint", "branch", "master", "script", "", "", true},
		{"deploy", "branch", "develop", "deploy", "develop", "integration", false},
		{"deploy", "branch", "release-1.2.3", "deploy", "release-1.2.3", "alpha", false},
		{"deploy", "branch", "master", "deploy", "latest", "web", false},
		{"deploy", "branch", "main", "deploy", "latest", "web", false},
		{"deploy", "tag", "v1.2.3", "deploy", "v1.2.3", "prod", false},
		{"deploy", "tag", "v1.2.3-hotfix2", "deploy", "v1.2.3-hotfix2", "prod", false},
		{"release", "tag", "v1.0.0", "release", "v1.0.0", "prod", false},
		{"deploy", "branch", "feature/login", "deploy", "", "", true},
		{"deploy", "branch", "release-1.2", "deploy", "", "", true},
		{"deploy", "branch", "developer", "deploy", "", "", true},
		{"deploy", "tag", "master", "deploy", "", "", true},
		{"deploy", "branch", "v1.0.0", "deploy", "", "", true},
		{"release", "tag", "1.0.0", "release", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.stage+"/"+tt.refType+"/"+tt.ref, func(t *testing.T) {
			p, err := PlanFor(&s, tt.stage, tt.refType, tt.ref)
			require.NoError(t, err)
			assert.Equal(t, tt.action, p.Action)
			assert.Equal(t, tt.noFlow, p.Flow == nil)
			assert.Equal(t, tt.tag, p.ImageTag)
			assert.Equal(t, tt.env, p.Env)
		})
	}
}

func TestPlanForOperatorStages(t *testing.T) {
	s := settings.Defaults()
	s.Stages["ship"] = settings.ActionDeploy
	s.Stages["deploy"] = settings.ActionScript // turned off
	p, err := PlanFor(&s, "ship", "branch", "master")
	require.NoError(t, err)
	assert.True(t, p.Native())
	p, err = PlanFor(&s, "deploy", "branch", "master")
	require.NoError(t, err)
	assert.False(t, p.Native())
}

func TestImageTag(t *testing.T) {
	tests := []struct {
		template, ref, want, err string
	}{
		{"{ref}", "release-1.0.0", "release-1.0.0", ""},
		{"{ref}", "Release-1.0.0", "release-1.0.0", ""},
		{"latest", "../../etc", "latest", ""},
		{"{ref}", "../../etc", "", "slash"},
		{"{ref}", "feature/x", "", "slash"},
		{"{ref}", "a b", "", "white space"},
		{"{ref}", strings.Repeat("a", 129), "", "129 characters"},
		{"{ref}", "-x", "", "starts with"},
		{"{ref}", "caf\u00e9", "", "characters outside"},
		{"{ref}", "\u00c9t\u00e9", "", "characters outside"},
		{"{ref}", "", "", "empty"},
	}
	for _, tt := range tests {
		got, err := ImageTag(tt.template, tt.ref)
		if tt.err != "" {
			require.Error(t, err, tt.ref)
			assert.Contains(t, err.Error(), tt.err)
			assert.Equal(t, failure.BuildFailure, failure.ClassOf(err), "a hostile ref is the job's fault")
			continue
		}
		require.NoError(t, err, tt.ref)
		assert.Equal(t, tt.want, got)
	}
}

func TestHostileRefsFailThePlan(t *testing.T) {
	s := settings.Defaults()
	s.Flows = append([]settings.Flow{{Name: "any", Branch: ".*", ImageTag: "{ref}", Environment: "web"}}, s.Flows...)
	for _, ref := range []string{"../../etc/passwd", "a b", strings.Repeat("x", 200), "x;rm -rf /"} {
		_, err := PlanFor(&s, "deploy", "branch", ref)
		assert.Error(t, err, ref)
	}
}

func TestCandidates(t *testing.T) {
	f := settings.DefaultFlows()[2]
	assert.Equal(t, []string{"release-1.2.3", "develop", "latest"}, Candidates(&f, "v1.2.3-hotfix1"))
	assert.Equal(t, "1.2.3", Version("v1.2.3"))
}
