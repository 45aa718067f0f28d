package driver

import (
	"context"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/berthci/berth/executor/joblog"
)

// The test rig's fault injection: with BERTH_TEST_PAUSE_AT=KIND:STEP
// ("deploy:stop-old", "rollback:start-target", "deploy:up"), a switch that
// reaches that step writes its pid to BERTH_TEST_PAUSE_FILE and waits there
// for a signal (the test's SIGTERM or SIGKILL), or until the test removes
// the file, two minutes at most. It only ever waits: a production runner
// never sets these.
const (
	PauseAtEnv   = "BERTH_TEST_PAUSE_AT"
	PauseFileEnv = "BERTH_TEST_PAUSE_FILE"
)

// PauseFromEnv is the pause hook the variables ask for, else nil.
func PauseFromEnv(getenv func(string) string, out io.Writer) func(ctx context.Context, step string) {
	at, file := getenv(PauseAtEnv), getenv(PauseFileEnv)
	if at == "" || file == "" {
		return nil
	}
	return func(ctx context.Context, step string) {
		if step != at {
			return
		}
		joblog.Step(out, "test hook: pausing at %s", step)
		_ = os.WriteFile(file, []byte(strconv.Itoa(os.Getpid())), 0o644)
		end := time.Now().Add(2 * time.Minute)
		for time.Now().Before(end) && ctx.Err() == nil {
			if _, err := os.Stat(file); err != nil {
				return // the test lets it go on
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
