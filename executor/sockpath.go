package executor

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxSocketPath is the longest path a unix socket address holds on Linux
// (sun_path is 108 bytes, with its terminating NUL).
const maxSocketPath = 107

// socketAddr is the address to bind or dial the socket at path: path
// itself when it fits, else the same file reached through a descriptor of
// its directory (/proc/self/fd/N/NAME), so that a deep builds_dir works.
// done closes the descriptor once the bind or dial is over.
func socketAddr(path string) (addr string, done func(), err error) {
	if len(path) <= maxSocketPath {
		return path, func() {}, nil
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	addr = fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path))
	if len(addr) > maxSocketPath {
		unix.Close(fd)
		return "", nil, fmt.Errorf("socket name %s is too long", filepath.Base(path))
	}
	return addr, func() { unix.Close(fd) }, nil
}
