package stages

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/stages/driver"
)

func TestBuildStampsLabelsAndPushRecordsDigest(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	im, out := testImages(c)
	dir := sourceDir(t, map[string]string{
		"Dockerfile":    "FROM busybox:local\nARG GREETING=none\nRUN echo $GREETING > /greeting\nCOPY app.txt /app.txt\n",
		"app.txt":       "v1\n",
		"secret.key":    "must not be sent\n",
		".dockerignore": "secret.key\n",
	})
	repo := "berth-test/" + unique("build")
	ref := testRegistry + "/" + repo + ":latest"
	labels := map[string]string{LabelRevision: "0123abc", LabelVersion: "master", LabelSource: "https://example.com/g/app"}
	id, err := im.Build(ctx, BuildOptions{Dir: dir, Dockerfile: "Dockerfile", Args: map[string]string{"GREETING": "hello"}, Tags: []string{ref}, Labels: labels})
	require.NoError(t, err)
	assert.Contains(t, out.String(), "berth:   [2/3] RUN echo hello > /greeting", "one line per step")
	assert.NotContains(t, out.String(), "copy /context")

	ins, err := c.ImageInspect(ctx, id)
	require.NoError(t, err)
	for k, v := range labels {
		assert.Equal(t, v, ins.Config.Labels[k], k)
	}

	digest, err := im.Push(ctx, ref)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(digest, "sha256:"), digest)
	got, status := registryDigest(t, repo, "latest")
	assert.Equal(t, 200, status)
	assert.Equal(t, digest, got, "the registry lists the tag with the pushed digest")
}

func TestFailedBuildQuotesTheStep(t *testing.T) {
	c := realEngine(t)
	im, _ := testImages(c)
	dir := sourceDir(t, map[string]string{"Dockerfile": "FROM busybox:local\nRUN echo fine\nRUN exit 3\n"})
	_, err := im.Build(context.Background(), BuildOptions{Dir: dir, Dockerfile: "Dockerfile", Tags: []string{unique("berth-test-fail:")}})
	require.Error(t, err)
	assert.Equal(t, failure.BuildFailure, failure.ClassOf(err))
	assert.Contains(t, err.Error(), "RUN exit 3")
	assert.Contains(t, err.Error(), "exit code: 3")
}

func TestBuildRefusesDockerfileOutsideContext(t *testing.T) {
	im := &Images{}
	_, err := im.Build(context.Background(), BuildOptions{Dir: t.TempDir(), Dockerfile: "../../etc/passwd"})
	assert.ErrorContains(t, err, "must be a path inside")
}

func TestPushToDeadRegistryFailsClearlyAfterRetries(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	im, out := testImages(c)
	ref := "127.0.0.1:5999/berth-test/app:latest" // nothing listens there
	require.NoError(t, c.ImageTag(ctx, "busybox:local", ref))
	_, err := im.Push(ctx, ref)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "push 127.0.0.1:5999/berth-test/app:latest failed")
	assert.Equal(t, 2, strings.Count(out.String(), "retry"), "retried with backoff")
}

func TestTransient(t *testing.T) {
	for msg, want := range map[string]bool{
		"dial tcp 127.0.0.1:5000: connect: connection refused":     true,
		"received unexpected HTTP status: 503 Service Unavailable": true,
		"unauthorized: authentication required":                    false,
		"denied: requested access to the resource is denied":       false,
	} {
		assert.Equal(t, want, driver.Transient(errString(msg)), msg)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
