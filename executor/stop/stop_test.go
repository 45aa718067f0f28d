package stop

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestGracefully(t *testing.T) {
	tests := []struct {
		name       string
		endsOnTerm bool
		endsOnKill bool
		wantKill   bool
		wantEnded  bool
	}{
		{name: "ends on TERM", endsOnTerm: true, wantEnded: true},
		{name: "needs KILL", endsOnKill: true, wantKill: true, wantEnded: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan struct{})
			killed := false
			ended := Gracefully(done, 20*time.Millisecond,
				func() {
					if tt.endsOnTerm {
						close(done)
					}
				},
				func() {
					killed = true
					if tt.endsOnKill {
						close(done)
					}
				})
			assert.Equal(t, tt.wantKill, killed)
			assert.Equal(t, tt.wantEnded, ended)
		})
	}
}

func TestGracefullyGivesUpOnAProcessThatNeverEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("waits afterKill")
	}
	start := time.Now()
	assert.False(t, Gracefully(make(chan error), time.Millisecond, func() {}, func() {}))
	assert.GreaterOrEqual(t, time.Since(start), afterKill)
}
