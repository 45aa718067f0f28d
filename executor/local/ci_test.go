package local

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// repoWith writes files (path → content) into a new directory.
func repoWith(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
	return dir
}

func ctxFor(ref Ref, vars ...string) *Context {
	c := &Context{Ref: ref, Vars: PredefinedForRef(ref, "local/app", "main")}
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		c.Vars[k] = v
	}
	return c
}

// plan loads the pipeline of files for ctx and lists it.
func plan(t *testing.T, files map[string]string, ctx *Context) (string, *Plan) {
	t.Helper()
	dir := repoWith(t, files)
	p, err := Load(dir, ".gitlab-ci.yml", ctx)
	require.NoError(t, err)
	pl, err := p.Plan(ctx)
	require.NoError(t, err)
	return pl.Listing(), pl
}

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

func TestPlanTheFlow(t *testing.T) {
	tests := []struct {
		ref  Ref
		want string
	}{
		{Ref{Name: "feature-x"}, "style style\ntest test\ndeploy rollback (manual)\n"},
		{Ref{Name: "develop"}, "style style\ntest test\ndeploy deploy\n"},
		{Ref{Name: "release-1.0.0"}, "style style\ntest test\ndeploy deploy\ndeploy rollback (manual)\n"},
		{Ref{Name: "v1.0.0", IsTag: true}, "style style\ntest test\ndeploy prod (manual)\nrelease release\n"},
	}
	for _, tc := range tests {
		list, _ := plan(t, map[string]string{".gitlab-ci.yml": flow}, ctxFor(tc.ref))
		assert.Equal(t, tc.want, list, tc.ref.Name)
	}
	_, pl := plan(t, map[string]string{".gitlab-ci.yml": flow}, ctxFor(Ref{Name: "main"}))
	test := pl.Jobs[1].Job
	assert.Equal(t, "busybox:local", test.Image)
	assert.Equal(t, []Service{{Image: "web:local", Alias: "web"}}, test.Services)
	assert.Equal(t, []Var{{"GLOBAL", "one"}, {"LOCAL", "two"}}, test.Variables)
	assert.True(t, pl.Jobs[2].AllowFailure.allowed, "a manual job without rules may fail")
}

func TestUnsupportedIsRefusedByNameAndLine(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"include: https://example.com/ci.yml\n", `.gitlab-ci.yml:1: include: remote https://example.com/ci.yml needs the network`},
		{"include:\n  - template: Security/SAST.gitlab-ci.yml\n", `.gitlab-ci.yml:2: include: template Security/SAST.gitlab-ci.yml needs GitLab's templates`},
		{"include:\n  - project: g/p\n    file: ci.yml\n", `include: project g/p needs another GitLab project`},
		{"include:\n  - component: gitlab.com/c/x@1\n", `include: component gitlab.com/c/x@1 needs the CI/CD catalog`},
		{"include: /nope.yml\n", `include: local /nope.yml: no such file`},
		{"job:\n  script: [x]\n  run: [{name: a}]\n", `.gitlab-ci.yml:3: job job: berth exec does not support the keyword "run"`},
		{"job:\n  script: [x]\n  needs: [{pipeline: $PARENT}]\n", `a job of another pipeline or project needs a GitLab`},
		{"job:\n  stage: ship\n  script: [x]\n", `stage "ship" is not in stages`},
		{"job:\n  image: busybox\n", "script is missing"},
		{"job:\n  extends: .nope\n  script: [x]\n", `extends: ".nope" is not a job or template`},
		{".a:\n  extends: .b\n.b:\n  extends: .a\njob:\n  extends: .a\n  script: [x]\n", "extends itself"},
		{"job:\n  script: !reference [.nope, script]\n", "!reference [.nope, script] names nothing"},
		{"job:\n  script: [x]\n  rules:\n    - if: '$A == '\n", "ends where a value should come"},
		{"job:\n  script: [x]\n  parallel: 500\n", "parallel: want a number from 1 to 200"},
	} {
		dir := repoWith(t, map[string]string{".gitlab-ci.yml": tc.yaml})
		_, err := Load(dir, ".gitlab-ci.yml", ctxFor(Ref{Name: "main"}))
		require.Error(t, err, tc.yaml)
		assert.Contains(t, err.Error(), tc.want)
	}
}

func TestExtendsDefaultAndReference(t *testing.T) {
	files := map[string]string{".gitlab-ci.yml": `
default:
  image: ruby:3
  before_script: [bundle install]
  tags: [docker]
variables:
  G: g
.base:
  variables: {A: "1", B: "1"}
  artifacts:
    paths: [out/]
.test:
  extends: .base
  stage: test
  variables: {B: "2"}
  script: [rake test]
unit:
  extends: .test
  variables: {C: "3"}
lint:
  extends: [.base, .test]
  image: node:20
  before_script:
    - !reference [default, before_script]
    - echo more
  script:
    - !reference [.test, script]
    - echo lint
alone:
  inherit:
    default: [tags]
    variables: false
  script: [echo alone]
`}
	_, pl := plan(t, files, ctxFor(Ref{Name: "main"}))
	jobs := map[string]*CIJob{}
	for _, pj := range pl.Jobs {
		jobs[pj.Job.Name] = pj.Job
	}
	unit := jobs["unit"]
	assert.Equal(t, "test", unit.Stage, "two levels of extends")
	assert.Equal(t, "ruby:3", unit.Image, "from default")
	assert.Equal(t, []string{"bundle install"}, unit.BeforeScript)
	assert.Equal(t, []Var{{"G", "g"}, {"A", "1"}, {"B", "2"}, {"C", "3"}}, unit.Variables, "hashes merge deeply")
	assert.Equal(t, []string{"out/"}, unit.Artifacts.Paths)
	lint := jobs["lint"]
	assert.Equal(t, "node:20", lint.Image, "the job's own key wins")
	assert.Equal(t, []string{"bundle install", "echo more"}, lint.BeforeScript, "!reference flattened into the list")
	assert.Equal(t, []string{"rake test", "echo lint"}, lint.Script)
	alone := jobs["alone"]
	assert.Empty(t, alone.Image, "inherit: default lists only tags")
	assert.Empty(t, alone.Variables, "inherit: variables: false")
}

func TestIncludeLocal(t *testing.T) {
	files := map[string]string{
		".gitlab-ci.yml": `
include:
  - local: /ci/base.yml
  - /ci/jobs/*.yml
  - local: ci/never.yml
    rules:
      - if: $CI_COMMIT_TAG
variables:
  WHO: main
build:
  stage: build
  script: [make]
`,
		"ci/base.yml":     "include: ci/nested.yml\nvariables:\n  WHO: base\n  BASE: yes\nstages: [build, test, deploy]\n",
		"ci/nested.yml":   ".tmpl:\n  stage: test\n",
		"ci/jobs/a.yml":   "job-a:\n  extends: .tmpl\n  script: [a]\n",
		"ci/jobs/b.yml":   "job-b:\n  extends: .tmpl\n  script: [b]\n",
		"ci/never.yml":    "never:\n  script: [n]\n",
		"ci/jobs/c.yaml2": "not: included\n",
	}
	list, pl := plan(t, files, ctxFor(Ref{Name: "main"}))
	assert.Equal(t, "build build\ntest job-a\ntest job-b\n", list)
	assert.Equal(t, []Var{{"WHO", "main"}, {"BASE", "yes"}}, pl.Jobs[0].Job.Variables, "the including file wins")
	list, _ = plan(t, files, ctxFor(Ref{Name: "v1", IsTag: true}))
	assert.Contains(t, list, "never", "include: rules")
}

func TestSpecInputs(t *testing.T) {
	files := map[string]string{
		".gitlab-ci.yml": "include:\n  - local: lint.yml\n    inputs:\n      stage: test\n",
		"lint.yml":       "spec:\n  inputs:\n    stage:\n      default: build\n    tool:\n      default: golint\n---\nlint-$[[ inputs.tool ]]:\n  stage: $[[ inputs.stage ]]\n  script: [$[[ inputs.tool ]] ./...]\n",
	}
	list, pl := plan(t, files, ctxFor(Ref{Name: "main"}))
	assert.Equal(t, "test lint-golint\n", list)
	assert.Equal(t, []string{"golint ./..."}, pl.Jobs[0].Job.Script)
}

func TestRules(t *testing.T) {
	files := map[string]string{
		".gitlab-ci.yml": `
workflow:
  rules:
    - if: $CI_COMMIT_MESSAGE =~ /skip ci/
      when: never
    - if: $CI_PIPELINE_SOURCE == "push"
      variables: {FROM_WORKFLOW: yes}
docs:
  script: [x]
  rules:
    - changes: [docs/**/*]
mr:
  script: [x]
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
exists:
  script: [x]
  rules:
    - exists: [go.mod]
      when: manual
      allow_failure: {exit_codes: [3, 4]}
default-branch:
  script: [x]
  rules:
    - if: ($CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH || $CI_COMMIT_TAG) && $DEPLOY != "no"
      variables: {LEVEL: high}
case:
  script: [x]
  rules:
    - if: $CI_COMMIT_REF_NAME =~ /^MAIN$/i
var-pattern:
  variables: {PATTERN: '/^ma/'}
  script: [x]
  rules:
    - if: $CI_COMMIT_REF_NAME =~ $PATTERN
null:
  script: [x]
  rules:
    - if: $NOT_SET == null && $CI_COMMIT_BRANCH != "x"
`,
		"go.mod": "module x\n",
	}
	ctx := ctxFor(Ref{Name: "main"})
	ctx.Changed = []string{"docs/guide/intro.md"}
	list, pl := plan(t, files, ctx)
	assert.Equal(t, "test docs\ntest exists (manual)\ntest default-branch\ntest case\ntest var-pattern\ntest null\n", list)
	for _, pj := range pl.Jobs {
		switch pj.Job.Name {
		case "exists":
			assert.True(t, pj.AllowFailure.Allowed(3))
			assert.False(t, pj.AllowFailure.Allowed(1))
		case "default-branch":
			assert.Equal(t, []Var{{"LEVEL", "high"}}, pj.Variables)
			assert.Contains(t, pl.Vars(pj), Var{"FROM_WORKFLOW", "yes"})
		}
	}
	ctx = ctxFor(Ref{Name: "main"}, "DEPLOY=no")
	ctx.Changed = []string{"src/main.go"}
	list, _ = plan(t, files, ctx)
	assert.NotContains(t, list, "docs")
	assert.NotContains(t, list, "default-branch", "--var DEPLOY=no")

	_, pl = plan(t, files, ctxFor(Ref{Name: "main"}, "CI_COMMIT_MESSAGE=wip [skip ci]"))
	assert.Empty(t, pl.Jobs)
	assert.Contains(t, pl.Skipped, "workflow rules")
}

func TestOnlyExcept(t *testing.T) {
	files := map[string]string{".gitlab-ci.yml": `
a:
  script: [x]
  only:
    refs: [main, tags]
    variables: [$RUN == "yes"]
b:
  script: [x]
  except:
    variables: [$SKIP]
c:
  script: [x]
  only: [merge_requests]
d:
  script: [x]
  only: [/^feat-/i]
e:
  script: [x]
  only:
    changes: [src/*]
`}
	list, _ := plan(t, files, ctxFor(Ref{Name: "main"}, "RUN=yes"))
	assert.Equal(t, "test a\ntest b\ntest e\n", list)
	list, _ = plan(t, files, ctxFor(Ref{Name: "FEAT-x"}, "SKIP=1"))
	assert.Equal(t, "test d\ntest e\n", list)
}

func TestParallel(t *testing.T) {
	files := map[string]string{".gitlab-ci.yml": `
build:
  stage: build
  script: [make]
  parallel:
    matrix:
      - ARCH: [amd64, arm64]
        OS: linux
      - ARCH: riscv
test:
  script: [go test]
  parallel: 3
deploy:
  stage: deploy
  script: [ship]
  needs: [build]
`}
	list, pl := plan(t, files, ctxFor(Ref{Name: "main"}))
	assert.Equal(t, strings.Join([]string{"build build: [amd64, linux]", "build build: [arm64, linux]", "build build: [riscv]",
		"test test 1/3", "test test 2/3", "test test 3/3", "deploy deploy"}, "\n")+"\n", list)
	assert.Contains(t, pl.Jobs[1].Job.Variables, Var{"ARCH", "arm64"})
	assert.Contains(t, pl.Jobs[4].Job.Variables, Var{"CI_NODE_INDEX", "2"})
	assert.Len(t, pl.Jobs[6].Needs, 3, "needs a matrix job: all its copies")
}

func TestNeedsMakeADag(t *testing.T) {
	files := map[string]string{".gitlab-ci.yml": `
stages: [build, test, deploy]
fast:
  stage: build
  script: [x]
slow:
  stage: build
  script: [x]
test-fast:
  stage: test
  needs: [fast]
  script: [x]
lint:
  stage: test
  needs: []
  script: [x]
deploy:
  stage: deploy
  script: [x]
  needs:
    - job: test-fast
    - job: maybe
      optional: true
`}
	list, pl := plan(t, files, ctxFor(Ref{Name: "main"}))
	assert.Equal(t, "build fast\nbuild slow\ntest lint\ntest test-fast\ndeploy deploy\n", list, "lint needs nothing: it starts with the first stage")
	byName := map[string]*Planned{}
	for _, pj := range pl.Jobs {
		byName[pj.Job.Name] = pj
	}
	assert.Equal(t, 0, byName["lint"].Level)
	assert.Equal(t, 1, byName["test-fast"].Level, "it starts when fast ends, not when the whole build stage does")
	require.Len(t, byName["test-fast"].Needs, 1)
	assert.Equal(t, "fast", byName["test-fast"].Needs[0].Job.Name)

	dir := repoWith(t, map[string]string{".gitlab-ci.yml": "a:\n  script: [x]\n  needs: [b]\nb:\n  script: [x]\n  needs: [a]\n"})
	p, err := Load(dir, ".gitlab-ci.yml", ctxFor(Ref{Name: "main"}))
	require.NoError(t, err)
	_, err = p.Plan(ctxFor(Ref{Name: "main"}))
	assert.ErrorContains(t, err, "circle")
}

func TestKeywordsThatChangeNothingHereAndNotes(t *testing.T) {
	files := map[string]string{".gitlab-ci.yml": `
job:
  script: [x]
  interruptible: true
  coverage: '/total: \d+/'
  resource_group: prod
  environment: {name: prod, url: https://example.com, action: start}
  timeout: 1h 30m
  retry: {max: 2, when: [script_failure]}
  tags: [docker]
  secrets:
    TOKEN: {vault: a/b@c}
  artifacts:
    paths: [out]
    exclude: [out/*.tmp]
    untracked: false
    when: always
    expire_in: 1 week
    reports:
      junit: report.xml
      dotenv: build.env
  cache:
    - key: {files: [go.sum], prefix: go}
      paths: [.cache]
      policy: pull
      fallback_keys: [go-main]
trigger:
  trigger: {include: child.yml}
`}
	list, pl := plan(t, files, ctxFor(Ref{Name: "main"}))
	assert.Equal(t, "test job\n    note: secrets: come from a secrets manager through GitLab, which berth exec cannot reach; the job runs without them\n", list, "the trigger job is skipped")
	j := pl.Jobs[0].Job
	assert.Equal(t, 90*60, int(j.Timeout.Seconds()))
	assert.Equal(t, 2, j.Retry)
	assert.Equal(t, "prod", j.Environment)
	assert.Equal(t, []string{"build.env"}, j.Artifacts.Dotenv)
	assert.Equal(t, "always", j.Artifacts.When)
	assert.Equal(t, []string{"go.sum"}, j.Cache[0].KeyFiles)
	assert.Equal(t, "pull", j.Cache[0].Policy)
}

func TestExpressions(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "", "REF": "release-1.2", "P": "/^release-/"}
	for _, tc := range []struct {
		expr string
		want bool
	}{
		{`$A`, true}, {`$B`, false}, {`$NOPE`, false},
		{`$A == "1"`, true}, {`$A == '2'`, false}, {`$A != "2"`, true},
		{`$NOPE == null`, true}, {`$A == null`, false}, {`$NOPE != null`, false},
		{`$REF =~ /^release-\d/`, true}, {`$REF !~ /^release-/`, false}, {`$REF =~ $P`, true},
		{`$REF =~ /RELEASE/i`, true},
		{`$A && $B || $REF`, true}, {`$A && ($B || $NOPE)`, false}, {`($A || $B) && $REF == "release-1.2"`, true},
		{`${A} == "1"`, true}, {`$A == $A`, true}, {`"x" == "x"`, true},
	} {
		e, err := ParseExpr(tc.expr)
		require.NoError(t, err, tc.expr)
		assert.Equal(t, tc.want, e.Eval(vars), tc.expr)
	}
	for _, bad := range []string{`$A ==`, `($A`, `$A === "1"`, `A == 1`, `$A =~ /(/`} {
		_, err := ParseExpr(bad)
		assert.Error(t, err, bad)
	}
}

func TestVariablesExpand(t *testing.T) {
	vars := (&Context{Vars: map[string]string{"CI_COMMIT_REF_SLUG": "main"}}).vars([]Var{{"IMAGE", "reg/app:$CI_COMMIT_REF_SLUG"}, {"LIT", "$$HOME"}})
	assert.Equal(t, "reg/app:main", vars["IMAGE"])
	assert.Equal(t, "$HOME", vars["LIT"])
}

func TestGlobs(t *testing.T) {
	for _, tc := range []struct {
		glob, path string
		want       bool
	}{
		{"docs/**/*", "docs/a/b.md", true}, {"docs/**/*", "docs/b.md", true}, {"*.go", "a/b.go", false},
		{"**/*.go", "a/b.go", true}, {"src/{a,b}.c", "src/b.c", true}, {"file?.txt", "file1.txt", true},
	} {
		re, err := globRegexp(tc.glob)
		require.NoError(t, err)
		assert.Equal(t, tc.want, re.MatchString(tc.path), "%s ~ %s", tc.glob, tc.path)
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	list, pl := plan(t, map[string]string{".gitlab-ci.yml": `
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
`}, ctxFor(Ref{Name: "main"}))
	assert.Equal(t, "test style\ntest test\n", list)
	style, test := pl.Jobs[0].Job, pl.Jobs[1].Job
	assert.Equal(t, "bash:local", style.Image)
	assert.Equal(t, []string{"echo one", "echo two"}, style.Script)
	assert.Equal(t, "busybox:local", test.Image, "an explicit key wins over a merged one")
	assert.Equal(t, []Var{{"B", "2"}, {"A", "1"}}, test.Variables)
}
