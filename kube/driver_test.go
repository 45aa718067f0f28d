package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages/driver"
)

// fakeHelper stands in for berth-kube: it keeps each request in dir and
// answers by operation, as berth-kube would. A deploy of an image with
// "bad" in it is a rollout that cannot succeed.
func fakeHelper(t *testing.T) (path, dir string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "berth-kube")
	script := `#!/bin/sh
req=$(cat)
n=$(ls ` + dir + ` | grep -c req-)
echo "$req" > ` + dir + `/req-$(printf %03d $n).json
echo "berth: alpha: working" >&2
case "$req" in
  *'"op":"deploy"'*bad*) echo '{"error":"alpha: rollout of web stuck: ImagePullBackOff","class":"build"}' ;;
  *'"op":"history"'*) echo '{"history":[{"Tag":"v2","Result":"serving"},{"Tag":"v1","Result":"replaced"}]}' ;;
  *'"op":"owner"'*) echo '{"owner":"group/app"}' ;;
  *'"op":"rollback"'*) echo '{"record":{"Tag":"v1","Result":"serving"}}' ;;
  *'"op":"recover"'*) echo '{"error":"the API server does not answer","class":"system"}' ;;
  *) echo '{}' ;;
esac
`
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	return path, dir
}

// requests are what berth sent the helper, in order.
func requests(t *testing.T, dir string) []Request {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "req-*.json"))
	require.NoError(t, err)
	sort.Strings(files)
	var out []Request
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		var r Request
		require.NoError(t, json.Unmarshal(b, &r))
		out = append(out, r)
	}
	return out
}

func TestDriverSpeaksToItsHelper(t *testing.T) {
	path, dir := fakeHelper(t)
	var out bytes.Buffer
	d := &Driver{Env: "alpha", Spec: settings.KubeSpec{Namespace: "apps", Deployment: "web", PullSecret: "regcred",
		RolloutTimeout: settings.Duration(time.Second)}, Helper: path, Out: &out,
		Login: func(image string) *Login { return &Login{Server: "reg.example", Username: "deployer", Password: "pw"} }}
	var _ driver.Driver = d
	ctx := context.Background()
	h := driver.Holder{Job: 7, Pipeline: 3, By: "alice"}
	unlock, err := d.Lock(ctx, h, time.Minute)
	require.NoError(t, err)
	require.NoError(t, d.Deploy(ctx, driver.Release{Env: "alpha", Image: "reg.example/app@sha256:1", Tag: "v2"}))
	err = d.Deploy(ctx, driver.Release{Env: "alpha", Image: "reg.example/bad@sha256:2", Tag: "v3"})
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Equal(t, "alpha: rollout of web stuck: ImagePullBackOff", err.Error())
	hist, err := d.History(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Equal(t, "v2", hist[0].Tag)
	owner, err := d.Owner(ctx, "group/app")
	require.NoError(t, err)
	assert.Equal(t, "group/app", owner)
	rec, err := d.Rollback(ctx, "v1", "bob")
	require.NoError(t, err)
	assert.Equal(t, "v1", rec.Tag)
	err = d.Recover(ctx, 7)
	require.Error(t, err)
	assert.Equal(t, failure.SystemFailure, failure.ClassOf(err))
	unlock()

	reqs := requests(t, dir)
	var ops []string
	for _, r := range reqs {
		ops = append(ops, r.Op)
		assert.Equal(t, "alpha", r.Env)
		assert.Equal(t, "web", r.Spec.Deployment)
	}
	assert.Equal(t, []string{OpLock, OpDeploy, OpDeploy, OpHistory, OpOwner, OpRollback, OpRecover, OpUnlock}, ops)
	assert.Equal(t, time.Minute, reqs[0].LockTimeout)
	assert.Equal(t, int64(7), reqs[1].Holder.Job, "the deploy renews the lock of the job that took it")
	require.NotNil(t, reqs[1].Login, "a pull secret is made from the operator's login")
	assert.Equal(t, "deployer", reqs[1].Login.Username)
	assert.Equal(t, "v1", reqs[5].To)
	assert.Equal(t, "bob", reqs[5].By)
	assert.Equal(t, "group/app", reqs[4].Claim)
	assert.Equal(t, len(reqs), strings.Count(out.String(), "berth: alpha: working\n"), "the helper's lines go to the job log as they come")
}

func TestDriverWithoutAPullSecretSendsNoLogin(t *testing.T) {
	path, dir := fakeHelper(t)
	called := false
	d := &Driver{Env: "alpha", Spec: settings.KubeSpec{Deployment: "web"}, Helper: path, Out: &bytes.Buffer{},
		Login: func(string) *Login { called = true; return &Login{} }}
	require.NoError(t, d.Deploy(context.Background(), driver.Release{Image: "reg.example/app@sha256:1"}))
	assert.False(t, called)
	assert.Nil(t, requests(t, dir)[0].Login)
}
