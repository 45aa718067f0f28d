package joblog

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestLines(t *testing.T) {
	tests := []struct {
		name  string
		write func(*bytes.Buffer)
		want  string
	}{
		{"step", func(b *bytes.Buffer) { Step(b, "built in %s", "1s") }, "berth: built in 1s\n"},
		{"warning", func(b *bytes.Buffer) { Warn(b, "ledger: %v", "gone") }, "berth: warning: ledger: gone\n"},
		{"banner", func(b *bytes.Buffer) { Banner(b, "v1", "job 12", "stage test") }, "berth v1 · job 12 · stage test\n"},
		{"percent in an argument stays", func(b *bytes.Buffer) { Step(b, "%s", "100%") }, "berth: 100%\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			tt.write(&b)
			assert.Equal(t, tt.want, b.String())
		})
	}
}
