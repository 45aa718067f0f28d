package stages

import (
	"context"
	"testing"
	"time"

	"github.com/berthci/berth/stages/target"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPromotionKeepsTheDigest(t *testing.T) {
	c := realEngine(t)
	ctx := context.Background()
	im, _ := testImages(c)
	repo := testRegistry + "/berth-test/" + unique("promote")
	dir := sourceDir(t, map[string]string{"Dockerfile": "FROM busybox:local\nCOPY f /f\n", "f": unique("content")})
	_, err := im.Build(ctx, BuildOptions{Dir: dir, Dockerfile: "Dockerfile", Tags: []string{repo + ":release-1.0.0"}, Labels: map[string]string{LabelRevision: "sha-1"}})
	require.NoError(t, err)
	pushed, err := im.Push(ctx, repo+":release-1.0.0")
	require.NoError(t, err)

	reg := &Registry{Creds: &target.Credentials{}, Out: im.Out, Retries: 1, Sleep: func(time.Duration) {}}
	rev, digest, ok, err := reg.Revision(ctx, repo+":release-1.0.0")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "sha-1", rev)
	assert.Equal(t, pushed, digest)

	_, _, ok, err = reg.Revision(ctx, repo+":nope")
	require.NoError(t, err)
	assert.False(t, ok, "a missing tag is no candidate, not an error")

	got, err := reg.Tag(ctx, repo+":release-1.0.0", repo+":v1.0.0")
	require.NoError(t, err)
	assert.Equal(t, pushed, got)
	d, ok, err := reg.Digest(ctx, repo+":v1.0.0")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, pushed, d, "the promoted tag has the same digest")
}
