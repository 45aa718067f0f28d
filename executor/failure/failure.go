// Package failure says whose fault a failure is, the job's or the host's,
// and turns that into the runner's exit codes. It is the ground floor: the
// runner protocol, the stages and every driver (and their helper binaries)
// class their errors with it.
package failure

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
)

// Class says whose fault a failure is, which decides the exit code.
type Class int

const (
	// SystemFailure is the host's fault (engine down, bad operator config);
	// the runner retries config and prepare and reports runner_system_failure.
	SystemFailure Class = iota
	// BuildFailure is the job's fault (its script failed, its image is missing).
	BuildFailure
)

// Error carries a class through %w wrapping.
type Error struct {
	Class Class
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Build marks err as the job's fault.
func Build(err error) error { return &Error{Class: BuildFailure, Err: err} }

// Buildf is Build(fmt.Errorf(...)).
func Buildf(format string, args ...any) error { return Build(fmt.Errorf(format, args...)) }

// System marks err as the host's fault.
func System(err error) error { return &Error{Class: SystemFailure, Err: err} }

// Systemf is System(fmt.Errorf(...)).
func Systemf(format string, args ...any) error { return System(fmt.Errorf(format, args...)) }

// ClassOf is the class of err; unclassified errors are the host's fault.
func ClassOf(err error) Class {
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return SystemFailure
}

// ExitCodes are the runner's codes for the two classes.
type ExitCodes struct {
	Build, System int
}

// ExitCodesOf reads the runner's codes for the two classes, as the
// protocol's environment gives them; without them (operator commands) they
// are 1 and 2.
func ExitCodesOf(build, system string) ExitCodes {
	codes := ExitCodes{Build: 1, System: 2}
	if v, err := strconv.Atoi(build); err == nil {
		codes.Build = v
	}
	if v, err := strconv.Atoi(system); err == nil {
		codes.System = v
	}
	return codes
}

// For maps an error to the process exit code.
func (c ExitCodes) For(err error) int {
	if err == nil {
		return 0
	}
	if ClassOf(err) == BuildFailure {
		return c.Build
	}
	return c.System
}

// IsOutage says whether err is a peer that could not be reached or did
// not answer (a registry, an engine, an ssh target, an API server that is
// down or restarting), as opposed to one that answered no. An outage is
// the host's fault, and a retry may help.
func IsOutage(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ETIMEDOUT} {
		if errors.Is(err, errno) {
			return true
		}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	s := strings.ToLower(err.Error())
	for _, hint := range []string{
		"connection refused", "connection reset", "no such host", "i/o timeout", "tls handshake timeout",
		"cannot connect to the docker daemon", "is the docker daemon running", "eof", "broken pipe",
		"server misbehaving", "503 service unavailable", "502 bad gateway", "504 gateway timeout",
		"status code 502", "status code 503", "status code 504", "ssh: connect to host", "connection closed by remote host",
		"the server is currently unable to handle the request", "context deadline exceeded",
	} {
		if strings.Contains(s, hint) {
			return true
		}
	}
	return false
}
