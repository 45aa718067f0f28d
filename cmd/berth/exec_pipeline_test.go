package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A pipeline written for this test, with what teams' pipelines use: extends
// chains with default: and !reference, include: local with a glob, rules,
// a DAG, artifacts along needs and dependencies, a dotenv report, a cache,
// parallel: matrix, allow_failure: exit_codes; all through berth's own
// containers.
const richPipeline = `include:
  - local: /ci/*.yml
stages: [build, test, report]
default:
  image: busybox:local
  before_script:
    - echo "default before_script"
variables:
  KIND: full
.tmpl:
  variables:
    FROM: template
  script:
    - echo "template script"
fast:
  stage: build
  extends: .base
  script:
    - !reference [.tmpl, script]
    - mkdir -p out && echo "built fast" > out/fast.txt
    - echo "VERSION=1.2.3" > build.env
  artifacts:
    paths: [out/]
    reports:
      dotenv: build.env
slow:
  stage: build
  script:
    - sleep 20
    - echo "slow done at $(date +%s)"
    - mkdir -p out && echo "built slow" > out/slow.txt
  artifacts:
    paths: [out/slow.txt]
after-fast:
  stage: test
  needs: [fast]
  script:
    - date +%s > /tmp/now && echo "after-fast at $(cat /tmp/now)"
    - cat out/fast.txt
    - test ! -f out/slow.txt
    - echo "version from dotenv $VERSION"
matrix:
  stage: test
  needs: []
  parallel:
    matrix:
      - ARCH: [amd64, arm64]
  script: [echo "arch $ARCH"]
flaky:
  stage: test
  needs: []
  script: [exit 7]
  allow_failure:
    exit_codes: [7]
cached:
  stage: test
  needs: []
  cache:
    key: shared
    paths: [cache/]
  script:
    - if [ -f cache/stamp ]; then echo "cache hit $(cat cache/stamp)"; else echo "cache miss"; fi
    - mkdir -p cache && echo "$CI_PIPELINE_ID" > cache/stamp
rules-job:
  stage: test
  needs: []
  rules:
    - if: ($CI_COMMIT_BRANCH == "master" || $CI_COMMIT_TAG) && $KIND =~ /^f/ && $NOPE == null
  script: [echo "rules matched"]
never:
  stage: test
  rules:
    - if: $CI_COMMIT_BRANCH != "master"
  script: [echo "must not run"]
report:
  stage: report
  dependencies: [slow]
  script:
    - cat out/slow.txt
    - test ! -f out/fast.txt
`

const richInclude = `.base:
  variables:
    FROM: base
  before_script:
    - !reference [default, before_script]
    - echo "base before_script from $FROM"
`

func richRepo(t *testing.T) *appRepo {
	repo := newAppRepo(t)
	require.NoError(t, os.MkdirAll(filepath.Join(repo.dir, "ci"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, ".gitlab-ci.yml"), []byte(richPipeline), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "ci", "base.yml"), []byte(richInclude), 0o644))
	repo.commit("rich")
	return repo
}

func TestExecRunsWhatTeamsPipelinesUse(t *testing.T) {
	r := needRig(t)
	repo := richRepo(t)

	out, err := r.berthExec(t, repo.dir, "--list")
	require.NoError(t, err, out)
	assert.Equal(t, strings.Join([]string{"build fast", "build slow", "test matrix: [amd64]", "test matrix: [arm64]", "test flaky",
		"test cached", "test rules-job", "test after-fast", "report report"}, "\n")+"\n", out)

	toml := writeTOML(t, defaultTOML)
	out, err = r.berthExecWith(t, toml, repo.dir, "--jobs", "8")
	require.NoError(t, err, out)
	for _, want := range []string{
		"default before_script", "base before_script from base", "template script", // extends, default, !reference, include
		"built fast", "version from dotenv 1.2.3", "built slow", // artifacts along needs and dependencies, dotenv
		"arch amd64", "arch arm64", "rules matched", "cache miss",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, "must not run")
	assert.Regexp(t, `(?m)^flaky\s+test\s+failed, allowed \(exit code 7\)`, out)
	assert.Regexp(t, `(?m)^matrix: \[arm64\]\s+test\s+success`, out)
	// the DAG: after-fast needs fast only, and ends before slow does
	afterFast := regexp.MustCompile(`after-fast at (\d+)`).FindStringSubmatch(out)
	require.NotNil(t, afterFast, out)
	slowDone := regexp.MustCompile(`slow done at (\d+)`).FindStringSubmatch(out)
	require.NotNil(t, slowDone, out)
	at, _ := strconv.ParseInt(afterFast[1], 10, 64)
	done, _ := strconv.ParseInt(slowDone[1], 10, 64)
	assert.Less(t, at, done, "after-fast did not wait for slow")
	assert.Regexp(t, `(?m)^report\s+report\s+success`, out)
	requireNoJobContainers(t, r)

	// a second run finds the cache the first one left
	out, err = r.berthExecWith(t, toml, repo.dir, "cached")
	require.NoError(t, err, out)
	assert.Regexp(t, `cache hit \d+`, out)
}

func TestExecWorkingTreeAndVariables(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, ".gitlab-ci.yml"), []byte(`job:
  image: busybox:local
  script:
    - cat note.txt
    - echo "var $WHO"
  rules:
    - if: $WHO
`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "note.txt"), []byte("committed\n"), 0o644))
	repo.commit("note")
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, "note.txt"), []byte("uncommitted change\n"), 0o644))

	out, err := r.berthExec(t, repo.dir, "--list")
	require.NoError(t, err)
	assert.Empty(t, out, "no job without WHO")

	out, err = r.berthExec(t, repo.dir, "--var", "WHO=tester")
	require.NoError(t, err, out)
	assert.Contains(t, out, "\ncommitted\n", "the commit, by default")
	assert.Contains(t, out, "var tester")

	out, err = r.berthExec(t, repo.dir, "--working-tree", "--var", "WHO=tester")
	require.NoError(t, err, out)
	assert.Contains(t, out, "uncommitted change")
	assert.Empty(t, repo.git("for-each-ref", "refs/berth-exec"), "the working tree's ref is gone")
	status := repo.git("status", "--porcelain")
	assert.Contains(t, status, "note.txt", "the change is still uncommitted")
}
