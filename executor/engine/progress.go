package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ReadProgressClose is ReadProgress, and closes the stream.
func ReadProgressClose(rc io.ReadCloser) error {
	defer rc.Close()
	return ReadProgress(rc)
}

// ReadProgress reads the engine's progress messages to the end: a failed
// pull reports its error in the stream, not in the HTTP status.
func ReadProgress(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read pull progress: %w", err)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}
