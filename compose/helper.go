package compose

import (
	"context"
	"io"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/stages"
)

// HelperName is the binary that runs docker compose for berth.
const HelperName = "berth-compose"

// Helper runs berth-compose: the request on stdin, the result on stdout.
type Helper struct {
	Path string
	Log  io.Writer // its stderr: nothing, unless it breaks
}

// FindHelper looks for berth-compose next to berth's own binary, then on
// PATH.
func FindHelper(log io.Writer) (Helper, error) {
	p, err := stages.FindHelper(HelperName)
	return Helper{Path: p, Log: log}, err
}

// Apply runs the helper once.
func (h Helper) Apply(ctx context.Context, req Request) (Result, error) {
	var res Result
	err := stages.RunHelper(ctx, h.Path, req, &res, h.Log)
	return res, err
}

// Err is a Result's error with its class, or nil.
func (r Result) Err() error {
	if r.Error == "" {
		return nil
	}
	if r.Class == ClassBuild || r.Class == ClassInvalid {
		return failure.Buildf("%s", r.Error)
	}
	return failure.Systemf("%s", r.Error)
}
