// Package stop is how berth stops what it started, everywhere: TERM, a
// grace period, then KILL, and a last wait.
package stop

import "time"

// afterKill is how long a killed process gets to be reaped.
const afterKill = 5 * time.Second

// Gracefully asks with term, waits up to grace for done, then forces with
// kill and waits up to afterKill more. It reports whether done came.
func Gracefully[T any](done <-chan T, grace time.Duration, term, kill func()) bool {
	term()
	select {
	case <-done:
		return true
	case <-time.After(grace):
	}
	kill()
	select {
	case <-done:
		return true
	case <-time.After(afterKill):
		return false
	}
}
