package driver

import (
	"fmt"
	"strconv"
	"time"
)

// The labels (on a lock container) and annotations (on a Lease) that say
// who holds a deploy lock: one set of keys and one codec for every driver.
// Cleanup finds a job's own locks by LabelLockJob.
const (
	LabelLockEnv      = "berth.lock.env"
	LabelLockKey      = "berth.lock.key"
	LabelLockJob      = "berth.lock.job"
	LabelLockPipeline = "berth.lock.pipeline"
	LabelLockBy       = "berth.lock.by"
	LabelLockSince    = "berth.lock.since"
	LabelLockDeadline = "berth.lock.deadline"
	LabelLockHost     = "berth.lock.host"
	LabelLockPID      = "berth.lock.pid"
)

// LockLabels renders the holder h of env's lock, whose target key is key,
// taken at since.
func LockLabels(env, key string, h Holder, since time.Time) map[string]string {
	return map[string]string{
		LabelLockEnv: env, LabelLockKey: key,
		LabelLockJob: strconv.FormatInt(h.Job, 10), LabelLockPipeline: strconv.FormatInt(h.Pipeline, 10), LabelLockBy: h.By,
		LabelLockSince: since.UTC().Format(time.RFC3339), LabelLockDeadline: h.Deadline.UTC().Format(time.RFC3339),
		LabelLockHost: h.Host, LabelLockPID: strconv.Itoa(h.PID),
	}
}

// HolderOfLabels reads a lock's holder back; what does not parse is zero.
func HolderOfLabels(l map[string]string) Holder {
	var h Holder
	h.Job, _ = strconv.ParseInt(l[LabelLockJob], 10, 64)
	h.Pipeline, _ = strconv.ParseInt(l[LabelLockPipeline], 10, 64)
	h.By = l[LabelLockBy]
	h.Deadline, _ = time.Parse(time.RFC3339, l[LabelLockDeadline])
	h.Host = l[LabelLockHost]
	h.PID, _ = strconv.Atoi(l[LabelLockPID])
	return h
}

// String names a holder for people: "job 12 of pipeline 3 (alice)".
func (h Holder) String() string {
	return fmt.Sprintf("job %d of pipeline %d (%s)", h.Job, h.Pipeline, h.By)
}

// Gone says why a lock's holder is surely gone, from what the holder
// itself recorded, or "": its job is past its deadline, or its berth ran
// on this host and has ended. Each kind of lock adds its own liveness
// (a heartbeat, a Lease renewal).
func (h Holder) Gone(now time.Time) string {
	if !h.Deadline.IsZero() && now.After(h.Deadline) {
		return "its job is over since " + h.Deadline.UTC().Format(time.RFC3339)
	}
	if h.Host != "" && h.Host == BootID() && ProcessGone(h.PID) {
		return fmt.Sprintf("its berth (pid %d on this host) is gone", h.PID)
	}
	return ""
}
