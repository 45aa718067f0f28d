package compose

import (
	"context"
	"io"
	"time"

	"github.com/berthci/berth/stages/driver"
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
	p, err := driver.FindHelper(HelperName)
	return Helper{Path: p, Log: log}, err
}

// Apply runs the helper once.
func (h Helper) Apply(ctx context.Context, req Request) (Result, error) {
	var res Result
	err := driver.RunHelper(ctx, h.Path, req, &res, h.Log, req.WaitTimeout+time.Minute) // time to put the previous digest back
	return res, err
}
