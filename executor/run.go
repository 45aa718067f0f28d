package executor

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/stop"
)

// detectShell runs the script with bash where the image has it, else sh.
const detectShell = `if [ -x /usr/local/bin/bash ]; then exec /usr/local/bin/bash; ` +
	`elif [ -x /usr/bin/bash ]; then exec /usr/bin/bash; ` +
	`elif [ -x /bin/bash ]; then exec /bin/bash; ` +
	`else exec sh; fi`

// Run executes one stage. A script that fails is a ScriptExit build failure;
// its code is written to the exit code file. When ctx is cancelled (SIGTERM)
// the script is stopped, TERM then KILL, and the job environment is left for
// after_script and cleanup.
func (e *Executor) Run(ctx context.Context, script, stage, exitCodeFile string) error {
	if err := TruncateBuildExitCode(exitCodeFile); err != nil {
		return failure.Systemf("truncate BUILD_EXIT_CODE_FILE: %w", err)
	}
	var err error
	switch {
	case e.Native != nil && (stage == "build_script" || stage == "step_script"):
		err = e.Native(ctx)
	case Route(stage) == InContainer:
		err = e.runIn(ctx, ContainerName(e.Job), script, stage)
	case e.SelfBinary != "":
		err = e.runHelperStage(ctx, script, stage)
	default:
		err = e.runIn(ctx, HelperName(e.Job), script, stage)
	}
	var se *ScriptExit
	if errors.As(err, &se) {
		if werr := WriteBuildExitCode(exitCodeFile, se.Code); werr != nil {
			return failure.Systemf("write BUILD_EXIT_CODE_FILE: %w", werr)
		}
		return failure.Build(err)
	}
	return err
}

// runHelperStage sends a stage's script to berth in the helper container.
func (e *Executor) runHelperStage(ctx context.Context, scriptPath, stage string) error {
	f, err := os.Open(scriptPath)
	if err != nil {
		return failure.Systemf("open stage script: %w", err)
	}
	defer f.Close()
	return e.runViaHelper(ctx, f, stage)
}

// errCancelled is the build failure of a stage stopped by SIGTERM.
var errCancelled = failure.Buildf("job cancelled: the script was stopped")

// runIn streams the stage's script into a shell in the named container
// (the job's, or its helper) and waits for it.
func (e *Executor) runIn(ctx context.Context, name, scriptPath, stage string) error {
	f, err := os.Open(scriptPath)
	if err != nil {
		return failure.Systemf("open stage script: %w", err)
	}
	defer f.Close()
	if name == ContainerName(e.Job) {
		e.stepf("%s in container %s", stage, name)
	}

	// The exec outlives ctx: on cancel we stop the script ourselves and
	// still read its last output.
	bg := context.WithoutCancel(ctx)
	ex, err := e.Engine.ContainerExecCreate(bg, name, container.ExecOptions{
		Cmd:          []string{"sh", "-c", detectShell},
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		WorkingDir:   JobDir(e.Settings, e.Job),
	})
	if err != nil {
		return failure.Systemf("start %s in container %s: %w (was prepare run, or the container removed?)", stage, name, err)
	}
	hj, err := e.Engine.ContainerExecAttach(bg, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return failure.Systemf("attach to %s in container %s: %w", stage, name, err)
	}
	defer hj.Close()
	go func() {
		_, _ = io.Copy(hj.Conn, f)
		_ = hj.CloseWrite() // end of script: the shell exits when done
	}()
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(e.ScriptOut, e.ScriptErr, hj.Reader)
		done <- err
	}()

	select {
	case err = <-done:
	case <-ctx.Done():
		e.stopScript(bg, name, done)
		return errCancelled
	}
	if err != nil {
		return failure.Systemf("read output of %s: %w", stage, err)
	}
	ins, err := e.Engine.ContainerExecInspect(bg, ex.ID)
	if err != nil {
		return failure.Systemf("read exit code of %s: %w", stage, err)
	}
	if ins.ExitCode != 0 {
		return &ScriptExit{Code: ins.ExitCode}
	}
	return nil
}

// stopScript signals every process in the job container but its main shell:
// TERM, then KILL after the grace period. The container stays for
// after_script and cleanup.
func (e *Executor) stopScript(ctx context.Context, name string, done <-chan error) {
	grace := e.Settings.Job.StopGrace.D()
	e.stepf("cancelled, stopping the script (TERM, KILL after %s)", grace)
	ended := stop.Gracefully(done, grace,
		func() { e.signalAll(ctx, name, "TERM") },
		func() { e.signalAll(ctx, name, "KILL") })
	if !ended {
		e.Log.Warnf("job %d: script output did not end after KILL", e.Job.ID)
	}
}

// signalAll sends sig to all processes of the container except PID 1 (the
// keep-alive shell) and the kill itself.
func (e *Executor) signalAll(ctx context.Context, name, sig string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ex, err := e.Engine.ContainerExecCreate(ctx, name, container.ExecOptions{
		Cmd: []string{"sh", "-c", "kill -s " + sig + " -1 2>/dev/null; true"},
	})
	if err == nil {
		hj, aerr := e.Engine.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
		if err = aerr; err == nil {
			_, _ = io.Copy(io.Discard, hj.Reader) // wait for the kill to finish
			hj.Close()
		}
	}
	if err != nil {
		e.Log.WithError(err).Warnf("job %d: send %s to the script", e.Job.ID, sig)
	}
}
