// Package engine is how berth reaches a Docker engine, for the job
// containers and for every environment on a Docker host: the client, the
// progress streams of pulls and imports, and the labels that say what berth
// made. A leaf: the protocol and the drivers both stand on it.
package engine

import (
	"fmt"
	"strings"

	"github.com/docker/cli/cli/connhelper"
	"github.com/docker/docker/client"
)

// NewClient connects to a Docker engine: host is unix://, tcp:// (TLS from
// DOCKER_CERT_PATH) or ssh:// through docker's own connection helper, with
// extra ssh flags; empty is DOCKER_HOST or the local socket.
func NewClient(host string, sshOpts ...string) (*client.Client, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if strings.HasPrefix(host, "ssh://") {
		h, err := connhelper.GetConnectionHelperWithSSHOpts(host, sshOpts)
		if err != nil {
			return nil, fmt.Errorf("docker_host %s: %w", host, err)
		}
		opts = append(opts, client.WithHost(h.Host), client.WithDialContext(h.Dialer))
	} else if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	c, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker_host %q: %w", host, err)
	}
	return c, nil
}
