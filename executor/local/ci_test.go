package local

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const flow = `
stages: [style, test, deploy, release]
variables:
  GLOBAL: one
image: busybox:local
style:
  stage: style
  script: [echo style]
test:
  stage: test
  services: [{name: web:local, alias: web}]
  variables: {LOCAL: two}
  script:
    - echo test
deploy:
  stage: deploy
  script: [":"]
  only: [master, develop, /^release-/]
  tags: [berth]
release:
  stage: release
  script: [":"]
  only: [tags]
prod:
  stage: deploy
  script: [":"]
  when: manual
  rules:
    - if: '$CI_COMMIT_TAG =~ /^v\d+/'
rollback:
  stage: deploy
  script: [":"]
  when: manual
  variables: {BERTH_ACTION: rollback}
  except: [tags, develop]
.hidden:
  script: [x]
`

func TestParseAndApply(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte(flow))
	require.NoError(t, err)
	var names []string
	for _, j := range p.Jobs {
		names = append(names, j.Name)
	}
	assert.Equal(t, []string{"style", "test", "deploy", "prod", "rollback", "release"}, names, "stage order, then file order")
	test := p.Jobs[1]
	assert.Equal(t, "busybox:local", test.Image)
	assert.Equal(t, []Service{{"web:local", "web"}}, test.Services)
	assert.Equal(t, []Var{{"GLOBAL", "one"}, {"LOCAL", "two"}}, test.Variables)

	applies := func(ref Ref) map[string]string {
		out := map[string]string{}
		for _, j := range p.Jobs {
			if how := j.Applies(ref); how != "" {
				out[j.Name] = how
			}
		}
		return out
	}
	tests := []struct {
		ref  Ref
		want map[string]string
	}{
		{Ref{Name: "feature-x"}, map[string]string{"style": "on_success", "test": "on_success", "rollback": "manual"}},
		{Ref{Name: "develop"}, map[string]string{"style": "on_success", "test": "on_success", "deploy": "on_success"}},
		{Ref{Name: "release-1.0.0"}, map[string]string{"style": "on_success", "test": "on_success", "deploy": "on_success", "rollback": "manual"}},
		{Ref{Name: "v1.0.0", IsTag: true}, map[string]string{"style": "on_success", "test": "on_success", "release": "on_success", "prod": "manual"}},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, applies(tc.ref), tc.ref.Name)
	}
}

func TestUnsupportedIsRefusedByName(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"include: x.yml\n", `.gitlab-ci.yml:1: berth exec does not support the keyword "include"`},
		{"job:\n  script: [x]\n  artifacts: {paths: [a]}\n", `.gitlab-ci.yml:3: job job: berth exec does not support the keyword "artifacts"`},
		{"job:\n  script: [x]\n  rules:\n    - if: '$CI_PIPELINE_SOURCE == \"push\"'\n", "knows only $CI_COMMIT_BRANCH, $CI_COMMIT_TAG and $CI_COMMIT_REF_NAME, not $CI_PIPELINE_SOURCE"},
		{"job:\n  script: [x]\n  only: [merge_requests]\n", `not "merge_requests"`},
		{"job:\n  stage: ship\n  script: [x]\n", `stage "ship" is not in stages`},
		{"job:\n  image: busybox\n", "script is missing"},
	} {
		_, err := Parse(".gitlab-ci.yml", []byte(tc.yaml))
		require.Error(t, err, tc.yaml)
		assert.Contains(t, err.Error(), tc.want)
	}
}

func TestRuleExpressions(t *testing.T) {
	for _, tc := range []struct {
		expr string
		ref  Ref
		want bool
	}{
		{`$CI_COMMIT_BRANCH == "develop"`, Ref{Name: "develop"}, true},
		{`$CI_COMMIT_BRANCH == "develop"`, Ref{Name: "develop", IsTag: true}, false},
		{`$CI_COMMIT_TAG`, Ref{Name: "v1", IsTag: true}, true},
		{`$CI_COMMIT_TAG`, Ref{Name: "main"}, false},
		{`$CI_COMMIT_REF_NAME != 'main' && $CI_COMMIT_BRANCH`, Ref{Name: "dev"}, true},
		{`$CI_COMMIT_BRANCH =~ /^release-/ || $CI_COMMIT_TAG`, Ref{Name: "release-1"}, true},
		{`$CI_COMMIT_BRANCH !~ /^release-/`, Ref{Name: "release-1"}, false},
	} {
		e, err := parseExpr(tc.expr)
		require.NoError(t, err, tc.expr)
		vars := map[string]string{"CI_COMMIT_REF_NAME": tc.ref.Name}
		if tc.ref.IsTag {
			vars["CI_COMMIT_TAG"] = tc.ref.Name
		} else {
			vars["CI_COMMIT_BRANCH"] = tc.ref.Name
		}
		assert.Equal(t, tc.want, e.eval(vars), tc.expr)
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte(`
.defaults: &defaults
  image: bash:local
  tags: [berth]
  variables: &vars {A: "1"}
.lint: &lint [echo one, echo two]
style:
  <<: *defaults
  script: *lint
test:
  <<: *defaults
  image: busybox:local
  variables:
    <<: *vars
    B: "2"
  script: [echo test]
`))
	require.NoError(t, err)
	require.Len(t, p.Jobs, 2)
	style, test := p.Jobs[0], p.Jobs[1]
	assert.Equal(t, "bash:local", style.Image)
	assert.Equal(t, []string{"echo one", "echo two"}, style.Script)
	assert.Equal(t, "busybox:local", test.Image, "an explicit key wins over a merged one")
	assert.Equal(t, []Var{{"B", "2"}, {"A", "1"}}, test.Variables)
}
