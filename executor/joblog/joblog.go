// Package joblog writes berth's own lines into the job log, which the
// runner shows between the script's output: one line per step, each
// starting "berth: " so that people tell berth's lines from their own.
package joblog

import (
	"fmt"
	"io"
	"strings"
)

// Prefix starts every line berth writes.
const Prefix = "berth: "

// Step writes one step line.
func Step(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, Prefix+format+"\n", args...)
}

// Warn writes a line about something that went wrong but did not fail the
// step.
func Warn(w io.Writer, format string, args ...any) {
	Step(w, "warning: "+format, args...)
}

// Banner writes the line that opens berth's part of a job: its version and
// the facts of the job, "berth v1 · job 12 · ref main (branch)".
func Banner(w io.Writer, version string, facts ...string) {
	fmt.Fprintf(w, "berth %s\n", strings.Join(append([]string{version}, facts...), " · "))
}
