package executor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/stop"
)

// A stage in the helper container costs a `docker exec` each (runc starts
// a process in the container's namespaces: ~80 ms here), and a job has up
// to seven such stages. So berth's own static binary runs in the helper
// container as `berth helper`, serving stages over a unix socket in a
// directory of the job's builds dir that only the helper sees (the job
// container gets an empty tmpfs there): `berth run` on the host connects,
// sends the script and streams the output back, in about a millisecond.
//
// The wire: the client sends the script as one frame (uint32 length, then
// the bytes), then at most the control bytes 'T' (stop: TERM) and 'K'
// (KILL). The server sends frames of a kind byte, a uint32 length and the
// data: stdout, stderr, and last the exit code (int32) or why the script
// could not start.

const (
	frameStdout byte = 1
	frameStderr byte = 2
	frameExit   byte = 3
	frameError  byte = 4

	controlTerm byte = 'T'
	controlKill byte = 'K'
)

// HelperSocketDir is the directory of the helper's socket: in the job's
// builds dir, so cleanup removes it, but outside the project dir.
func HelperSocketDir(jobDir string) string { return filepath.Join(jobDir, ".berth") }

// HelperSocket is the socket `berth helper` listens on.
func HelperSocket(jobDir string) string { return filepath.Join(HelperSocketDir(jobDir), "helper.sock") }

// ServeHelper is `berth helper`: it runs the stages sent to socket, one at
// a time, each with bash if the image has it (else sh), in dir.
func ServeHelper(ctx context.Context, socket, dir string) error {
	linkRunnerHelper()
	_ = os.Remove(socket) // a restarted container's stale socket
	addr, done, err := socketAddr(socket)
	if err != nil {
		return err
	}
	l, err := net.Listen("unix", addr)
	done()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); l.Close() }()
	var mu sync.Mutex // stages run one after another, as the runner calls them
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			mu.Lock()
			defer mu.Unlock()
			serveStage(c, dir)
		}()
	}
}

func serveStage(c net.Conn, dir string) {
	defer c.Close()
	r := bufio.NewReader(c)
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return
	}
	script := make([]byte, n)
	if _, err := io.ReadFull(r, script); err != nil {
		return
	}
	w := &frameWriter{w: c}
	cmd := exec.Command("sh", "-c", detectShell)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(script)
	cmd.Stdout, cmd.Stderr = w.stream(frameStdout), w.stream(frameStderr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the stage and what it starts, signalled together
	if err := cmd.Start(); err != nil {
		w.frame(frameError, []byte(err.Error()))
		return
	}
	// control bytes; a client that goes away takes its stage with it
	go func() {
		for {
			b, err := r.ReadByte()
			switch {
			case err != nil:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				return
			case b == controlTerm:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			case b == controlKill:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		}
	}()
	err := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if code < 0 { // killed by a signal
			code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
	case err != nil:
		w.frame(frameError, []byte(err.Error()))
		return
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(int32(code)))
	w.frame(frameExit, b[:])
}

// frameWriter multiplexes streams onto the connection.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) frame(kind byte, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	_, _ = f.w.Write(hdr[:])
	_, _ = f.w.Write(data)
}

type streamWriter struct {
	f    *frameWriter
	kind byte
}

func (f *frameWriter) stream(kind byte) io.Writer { return streamWriter{f, kind} }

func (s streamWriter) Write(p []byte) (int, error) {
	s.f.frame(s.kind, p)
	return len(p), nil
}

// runViaHelper runs a stage through `berth helper`: the script's output to
// berth's stdout and stderr, its exit code as a ScriptExit. When ctx is
// cancelled the stage gets TERM, then KILL after stop_grace.
func (e *Executor) runViaHelper(ctx context.Context, script io.Reader, stage string) error {
	data, err := io.ReadAll(script)
	if err != nil {
		return failure.Systemf("read stage script: %w", err)
	}
	sock, closeDir, err := socketAddr(HelperSocket(JobDir(e.Settings, e.Job)))
	if err != nil {
		return failure.Systemf("reach the helper container for %s: %w", stage, err)
	}
	var c net.Conn
	for attempt := 0; ; attempt++ { // a helper that has just started may not listen yet
		if c, err = net.Dial("unix", sock); err == nil || attempt == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	closeDir()
	if err != nil {
		return failure.Systemf("reach the helper container for %s: %w (was prepare run, or the container removed?)", stage, err)
	}
	defer c.Close()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(data)))
	if _, err := c.Write(append(hdr[:], data...)); err != nil {
		return failure.Systemf("send %s to the helper container: %w", stage, err)
	}
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := readFrames(bufio.NewReader(c), e.ScriptOut, e.ScriptErr)
		done <- result{code, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		grace := e.Settings.Job.StopGrace.D()
		e.stepf("cancelled, stopping the script (TERM, KILL after %s)", grace)
		stop.Gracefully(done, grace,
			func() { _, _ = c.Write([]byte{controlTerm}) },
			func() { _, _ = c.Write([]byte{controlKill}) })
		return errCancelled
	}
	if res.err != nil {
		return failure.Systemf("%s in the helper container: %w", stage, res.err)
	}
	if res.code != 0 {
		return &ScriptExit{Code: res.code}
	}
	return nil
}

// readFrames copies a stage's output and returns its exit code.
func readFrames(r *bufio.Reader, stdout, stderr io.Writer) (int, error) {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return 0, fmt.Errorf("the helper ended the stage without an exit code: %w", err)
		}
		data := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(r, data); err != nil {
			return 0, err
		}
		switch hdr[0] {
		case frameStdout:
			_, _ = stdout.Write(data)
		case frameStderr:
			_, _ = stderr.Write(data)
		case frameExit:
			return int(int32(binary.BigEndian.Uint32(data))), nil
		case frameError:
			return 0, errors.New(string(data))
		}
	}
}

// linkRunnerHelper makes GitLab's gitlab-runner-helper answer to the name
// the runner's scripts call, gitlab-runner, where no runner binary was
// mounted.
func linkRunnerHelper() {
	if _, err := exec.LookPath("gitlab-runner"); err == nil {
		return
	}
	if p, err := exec.LookPath("gitlab-runner-helper"); err == nil {
		_ = os.MkdirAll(helperBinDir, 0o755)
		_ = os.Symlink(p, filepath.Join(helperBinDir, "gitlab-runner"))
	}
}
