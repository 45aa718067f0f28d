// Package executor implements the custom executor protocol: the job context
// from the runner's payload, the job's containers, stage routing and how a
// script's own exit code reaches the runner (failure classes: package
// failure).
package executor

import (
	"errors"
	"fmt"
	"os"
	"strconv"
)

// ScriptExit is a job script that exited non-zero: a build failure whose code
// also goes to BUILD_EXIT_CODE_FILE for `allow_failure: exit_codes`.
type ScriptExit struct{ Code int }

func (e *ScriptExit) Error() string { return fmt.Sprintf("script exited with code %d", e.Code) }

// WriteBuildExitCode records a script's own exit code where the runner reads
// it. An empty path (run by hand) is fine.
func WriteBuildExitCode(path string, code int) error {
	if path == "" {
		return nil
	}
	return os.WriteFile(path, []byte(strconv.Itoa(code)), 0o600)
}

// TruncateBuildExitCode empties the file before a stage, so a code left by an
// earlier stage is never read for this one.
func TruncateBuildExitCode(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}
