package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"context"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const execPipeline = `stages: [style, test, ship]
image: busybox:local
variables:
  GREETING: hello
style:
  stage: style
  script:
    - echo "$GREETING from $CI_JOB_NAME on $CI_COMMIT_REF_NAME"
    - test -f Dockerfile
test:
  stage: test
  services: [{name: web:local, alias: app}]
  script:
    - wget -qO- http://app:5000/health
    - exit $TEST_EXIT
  after_script:
    - 'echo "after: $CI_JOB_STATUS"'
only-tags:
  stage: test
  script: [echo never on a branch]
  only: [tags]
manual:
  stage: ship
  script: [echo by hand]
  when: manual
`

// execRepo is a repository with the pipeline above, test's exit code set
// by a variable.
func execRepo(t *testing.T, testExit string) *appRepo {
	repo := newAppRepo(t)
	body := strings.Replace(execPipeline, "GREETING: hello", "GREETING: hello\n  TEST_EXIT: \""+testExit+"\"", 1)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, ".gitlab-ci.yml"), []byte(body), 0o644))
	repo.commit("exec")
	return repo
}

func (r *rig) berthExec(t *testing.T, dir string, args ...string) (string, error) {
	return r.berthExecWith(t, writeTOML(t, defaultTOML), dir, args...)
}

// berthExecWith runs berth exec with a given berth.toml (its cache_dir
// outlives the run).
func (r *rig) berthExecWith(t *testing.T, toml, dir string, args ...string) (string, error) {
	cmd := exec.Command(r.berth, append([]string{"--config", toml, "exec"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func requireNoJobContainers(t *testing.T, r *rig) {
	list, err := r.docker.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "berth.project=local/app"))})
	require.NoError(t, err)
	assert.Empty(t, list, "berth exec leaves no container behind")
}

func TestExecRunsThePipelineForTheRef(t *testing.T) {
	r := needRig(t)
	repo := execRepo(t, "0")
	out, err := r.berthExec(t, repo.dir)
	require.NoError(t, err, out)
	assert.Contains(t, out, "berth exec: 2 job(s) for branch master")
	assert.Contains(t, out, "hello from style on master")
	assert.Contains(t, out, "$ wget -qO- http://app:5000/health\nok\n", "the service by its alias")
	assert.Contains(t, out, "after: success")
	assert.NotContains(t, out, "never on a branch")
	assert.NotContains(t, out, "by hand", "manual jobs need --manual")
	assert.Regexp(t, `(?m)^style\s+style\s+success\s+\S+$`, out)
	assert.Regexp(t, `(?m)^test\s+test\s+success\s+\S+$`, out)
	requireNoJobContainers(t, r)

	out, err = r.berthExec(t, repo.dir, "--manual", "manual")
	require.NoError(t, err, out)
	assert.Contains(t, out, "by hand")
}

func TestExecStopsAtAFailedJob(t *testing.T) {
	r := needRig(t)
	repo := execRepo(t, "3")
	repo.git("tag", "v1.0.0")
	out, err := r.berthExec(t, repo.dir, "--tag", "v1.0.0", "--manual")
	require.Error(t, err)
	assert.Contains(t, out, "after: failed")
	assert.Regexp(t, `(?m)^test\s+test\s+failed \(exit code 3\)`, out)
	assert.Regexp(t, `(?m)^only-tags\s+test\s+success`, out, "a tag pipeline runs the tag-only job")
	assert.Regexp(t, `(?m)^manual\s+ship\s+skipped \(what it waits for failed\)`, out)
	requireNoJobContainers(t, r)
}

func TestExecRefusesWhatItDoesNotSupport(t *testing.T) {
	r := needRig(t)
	repo := newAppRepo(t)
	require.NoError(t, os.WriteFile(filepath.Join(repo.dir, ".gitlab-ci.yml"), []byte("include:\n  - template: Security/SAST.gitlab-ci.yml\nbuild:\n  script: [make]\n"), 0o644))
	repo.commit("x")
	out, err := r.berthExec(t, repo.dir)
	require.Error(t, err)
	assert.Contains(t, out, `.gitlab-ci.yml:2: include: template Security/SAST.gitlab-ci.yml needs GitLab's templates`)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode(), "the job's own fault: a build failure")

	out, err = r.berthExec(t, repo.dir, "nosuchjob")
	require.Error(t, err)
	assert.Contains(t, out, "needs GitLab's templates", "the file is refused before any job is looked for")
}
