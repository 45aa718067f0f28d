package target

import (
	"context"
	"io"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/stages/driver"
)

// Puller is what pulling an image on a target needs.
type Puller interface {
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, opts image.PullOptions) (io.ReadCloser, error)
}

// PullOnTarget makes ref present on a target engine, with the registry
// credentials berth found for it; an outage is retried with backoff, each
// attempt in out. A release berth resolved that cannot be pulled is the
// host's fault.
func PullOnTarget(ctx context.Context, eng Puller, creds *Credentials, out io.Writer, ref string) error {
	if _, err := eng.ImageInspect(ctx, ref); err == nil {
		return nil
	}
	auth, _, err := creds.Encoded(ref)
	if err != nil {
		return err
	}
	err = driver.Retry(ctx, pullRetries, time.Sleep, out, "pull on the target failed", func() error {
		rc, err := eng.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
		if err == nil {
			err = drain(rc)
		}
		if err != nil && !failure.IsOutage(err) {
			return driver.Permanent{Err: err}
		}
		return err
	})
	if err != nil {
		return failure.Systemf("pull %s on the target: %v", ref, err)
	}
	return nil
}

// pullRetries are the retries of a pull on a target after an outage.
const pullRetries = 3

// drain reads a progress stream to its end and returns its error message.
func drain(rc io.ReadCloser) error {
	defer rc.Close()
	return engine.ReadProgress(rc)
}
