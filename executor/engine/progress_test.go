package engine

import (
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestReadProgress(t *testing.T) {
	tests := []struct {
		name, stream, wantErr string
	}{
		{"done", `{"status":"Pulling"}` + "\n" + `{"status":"Pull complete"}`, ""},
		{"the engine's error is in the stream", `{"status":"Pulling"}` + "\n" + `{"error":"manifest unknown","errorDetail":{"message":"manifest unknown"}}`, "manifest unknown"},
		{"garbage", `{"status":`, "read pull progress"},
		{"empty", ``, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ReadProgressClose(io.NopCloser(strings.NewReader(tt.stream)))
			if tt.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tt.wantErr)
			}
		})
	}
}

func TestNewClient(t *testing.T) {
	for _, host := range []string{"", "unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"} {
		c, err := NewClient(host)
		assert.NoError(t, err, host)
		assert.NotNil(t, c)
	}
	_, err := NewClient("ssh://")
	assert.Error(t, err)
}
