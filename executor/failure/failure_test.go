package failure

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestExitCodes(t *testing.T) {
	codes := ExitCodesOf("11", "22")
	assert.Equal(t, 0, codes.For(nil))
	assert.Equal(t, 11, codes.For(Buildf("bad image")))
	assert.Equal(t, 11, codes.For(fmt.Errorf("wrapped: %w", Buildf("bad"))))
	assert.Equal(t, 22, codes.For(Systemf("engine down")))
	assert.Equal(t, 22, codes.For(errors.New("unclassified")), "unclassified errors are the host's fault")
	assert.Equal(t, ExitCodes{Build: 1, System: 2}, ExitCodesOf("", ""))
	assert.Equal(t, "bad image", Buildf("bad image").Error())
}

func TestIsOutage(t *testing.T) {
	_, dialErr := net.Dial("tcp", "127.0.0.1:1")
	for _, err := range []error{
		dialErr,
		fmt.Errorf("push: %w", syscall.ECONNREFUSED),
		errors.New("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"),
		errors.New("ssh: connect to host 127.0.0.1 port 2299: Connection refused"),
		errors.New("received unexpected HTTP status: 503 Service Unavailable"),
		context.DeadlineExceeded,
	} {
		assert.True(t, IsOutage(err), "%v", err)
	}
	for _, err := range []error{nil, errors.New("manifest unknown"), errors.New("unauthorized: authentication required"), Buildf("build failed at step X")} {
		assert.False(t, IsOutage(err), "%v", err)
	}
}
