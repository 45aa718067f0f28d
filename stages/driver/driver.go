package driver

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// Release is one version of an environment: what deploy puts in place.
type Release struct {
	Env      string
	Image    string // repository@sha256:..., what actually runs
	Digest   string
	Tag      string // the tag, for people
	Ref      string
	Sha      string
	Pipeline int64
	Job      int64
	By       string // who started it
	Project  string // the project that deployed it (job_info)
	Flow     string // the flow that sent it there, for "no deploy goes backwards"
}

// Record is one line of an environment's history.
type Record struct {
	Time     time.Time
	Ref, Tag string
	Digest   string
	Pipeline int64
	Job      int64
	By       string
	Result   string // serving, replaced, failed, rolled back by X, adopted
	ID       string // driver-specific: container name, revision
	Flow     string
}

// Holder is who holds an environment's deploy lock.
type Holder struct {
	Job, Pipeline int64
	By            string
	Deadline      time.Time
	// Host (the boot id of the machine) and PID are the berth process
	// that holds it: a waiter on the same host knows at once when that
	// process is gone.
	Host string `json:",omitempty"`
	PID  int    `json:",omitempty"`
}

// ThisProcess fills in the holder's host and pid.
func (h Holder) ThisProcess() Holder {
	h.Host, h.PID = BootID(), os.Getpid()
	return h
}

// BootID names this boot of this machine.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ProcessGone says whether pid on this host has ended (or is a zombie).
func ProcessGone(pid int) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// "pid (comm) S ...": the state follows the last parenthesis
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// LockName is the name of the deploy lock of a target key: a container on
// a Docker engine, a Lease on Kubernetes.
func LockName(key string) string { return "berth-lock-" + key }

// Driver is the one interface every environment driver implements; the
// deploy stage is written once against it.
type Driver interface {
	// Lock waits, up to timeout, until this job holds the environment.
	Lock(ctx context.Context, h Holder, timeout time.Duration) (unlock func(), err error)
	// Deploy puts a release in place and waits for it to be healthy; when
	// it is not, the previous version is restored and an error returned.
	Deploy(ctx context.Context, r Release) error
	// Rollback restores the previous version, or the one whose tag or
	// digest is to.
	Rollback(ctx context.Context, to, by string) (Record, error)
	// History lists deployments, newest first.
	History(ctx context.Context) ([]Record, error)
	// Owner is the project that owns the environment, as recorded at the
	// target; when none does yet and claim is set, claim is recorded.
	Owner(ctx context.Context, claim string) (string, error)
	// Recover finishes what a berth killed mid-switch left: if job holds
	// the environment's lock, its switch is put right and the lock
	// released. Deploy and Rollback do the same for any job's leftovers
	// before they start.
	Recover(ctx context.Context, job int64) error
}
