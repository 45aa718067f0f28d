package stages

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
)

// ImageEngine is the part of the Engine API that builds and pushes.
type ImageEngine interface {
	ImageBuild(ctx context.Context, buildContext io.Reader, opts build.ImageBuildOptions) (build.ImageBuildResponse, error)
	ImagePush(ctx context.Context, ref string, opts image.PushOptions) (io.ReadCloser, error)
	ImageTag(ctx context.Context, source, target string) error
}

// Images builds and pushes through one engine.
type Images struct {
	Engine  ImageEngine
	Creds   *target.Credentials
	Out     io.Writer // the job log
	Retries int
	// Sleep waits between retries; tests make it instant.
	Sleep func(time.Duration)
}

// BuildOptions describe one build from checked-out sources.
type BuildOptions struct {
	Dir        string // the context directory
	Dockerfile string // relative to Dir
	Args       map[string]string
	Tags       []string
	Labels     map[string]string
}

// OCI labels stamped on every build.
const (
	LabelRevision = "org.opencontainers.image.revision"
	LabelSource   = "org.opencontainers.image.source"
	LabelVersion  = "org.opencontainers.image.version"
	LabelCreated  = "org.opencontainers.image.created"
)

// Build builds an image with BuildKit, printing one line per finished step.
// A failed build is the job's fault and quotes the failing step.
func (im *Images) Build(ctx context.Context, o BuildOptions) (string, error) {
	if _, err := insideDir(o.Dir, o.Dockerfile, "the Dockerfile"); err != nil {
		return "", err
	}
	ctxTar, err := tarContext(o.Dir, o.Dockerfile)
	if err != nil {
		return "", failure.Buildf("build context %s: %w", o.Dir, err)
	}
	defer ctxTar.Close()
	args := map[string]*string{}
	for k, v := range o.Args {
		args[k] = &v
	}
	resp, err := im.Engine.ImageBuild(ctx, ctxTar, build.ImageBuildOptions{
		Version:     build.BuilderBuildKit,
		Tags:        o.Tags,
		Dockerfile:  filepath.ToSlash(o.Dockerfile),
		BuildArgs:   args,
		Labels:      o.Labels,
		Remove:      true,
		ForceRemove: true,
	})
	if err != nil {
		return "", failure.Systemf("start build: %w", err)
	}
	defer resp.Body.Close()
	return im.readBuild(resp.Body)
}

// insideDir is rel below dir with every symlink resolved; a path that
// leaves dir, by name or through a link, is refused: the checked-out
// sources are the job's, the rest of the host is not.
func insideDir(dir, rel, what string) (string, error) {
	if filepath.IsAbs(rel) || strings.HasPrefix(filepath.Clean(rel), "..") {
		return "", failure.Buildf("%s %q must be a path inside %s", what, rel, dir)
	}
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", failure.Buildf("%s: %v", what, err)
	}
	p, err := filepath.EvalSymlinks(filepath.Join(dir, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return "", failure.Buildf("%s %q does not exist in %s: check [build] in berth.toml or the job's BERTH_ variables", what, rel, dir)
	}
	if err != nil {
		return "", failure.Buildf("%s %q: %v", what, rel, err)
	}
	if r, err := filepath.Rel(root, p); err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", failure.Buildf("%s %q must be a path inside %s: it leads to %s through a symlink", what, rel, dir, p)
	}
	return p, nil
}

// buildMessage is one JSON message of the build stream, classic or BuildKit.
type buildMessage struct {
	ID          string          `json:"id"`
	Stream      string          `json:"stream"`
	Aux         json.RawMessage `json:"aux"`
	Error       string          `json:"error"`
	ErrorDetail struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
}

func (im *Images) readBuild(r io.Reader) (string, error) {
	dec := json.NewDecoder(r)
	var imageID, lastStep, failedStep string
	printed := map[string]bool{}
	for {
		var m buildMessage
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", failure.Systemf("read build output: %w", err)
		}
		switch {
		case m.Error != "":
			step := failedStep
			if step == "" {
				step = lastStep
			}
			if step != "" {
				return "", failure.Buildf("build failed at step %q: %s", step, m.Error)
			}
			return "", failure.Buildf("build failed: %s", m.Error)
		case m.ID == "moby.buildkit.trace":
			vs, err := decodeTrace(m.Aux)
			if err != nil {
				continue // progress only; the build's own result still counts
			}
			for _, v := range vs {
				if v.err != "" {
					failedStep = v.name
				}
				if v.completed && v.err == "" && !printed[v.name] && !strings.HasPrefix(v.name, "[internal]") && v.name != "copy /context /" {
					printed[v.name] = true
					cached := ""
					if v.cached {
						cached = " (cached)"
					}
					joblog.Step(im.Out, "  %s%s", v.name, cached)
				}
			}
		case len(m.Aux) > 0:
			var aux struct{ ID string }
			if json.Unmarshal(m.Aux, &aux) == nil && aux.ID != "" {
				imageID = aux.ID
			}
		case strings.HasPrefix(m.Stream, "Step "):
			lastStep = strings.TrimSpace(m.Stream)
			joblog.Step(im.Out, "  %s", lastStep)
		}
	}
	if imageID == "" {
		return "", failure.Systemf("build ended without an image id")
	}
	return imageID, nil
}

// Push pushes ref and returns its digest. Transient registry errors are
// retried with backoff; a registry that refuses the credentials is not.
func (im *Images) Push(ctx context.Context, ref string) (string, error) {
	auth, source, err := im.Creds.Encoded(ref)
	if err != nil {
		return "", err
	}
	var digest string
	last := driver.Retry(ctx, im.Retries, im.Sleep, im.Out, "push failed", func() (err error) {
		digest, err = im.pushOnce(ctx, ref, auth)
		return err
	})
	if last == nil {
		return digest, nil
	}
	return "", registryFault(last, "push %s failed (credentials: %s): %v: check that the registry is up and the credentials may push there", ref, source, last)
}

func (im *Images) pushOnce(ctx context.Context, ref, auth string) (string, error) {
	rc, err := im.Engine.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: auth})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	digest := ""
	for {
		var m buildMessage
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", err
		}
		if m.Error != "" {
			return "", errors.New(m.Error)
		}
		var aux struct{ Digest string }
		if len(m.Aux) > 0 && json.Unmarshal(m.Aux, &aux) == nil && aux.Digest != "" {
			digest = aux.Digest
		}
	}
	if digest == "" {
		return "", errors.New("the registry reported no digest")
	}
	return digest, nil
}

// registryFault classes a registry error: an outage or refused
// credentials are the host's (the runner retries the job), anything else,
// a tag or repository that is not there, the job's.
func registryFault(err error, format string, args ...any) error {
	s := strings.ToLower(err.Error())
	if failure.IsOutage(err) || strings.Contains(s, "unauthorized") || strings.Contains(s, "denied") || strings.Contains(s, "authentication required") {
		return failure.Systemf(format, args...)
	}
	return failure.Buildf(format, args...)
}
