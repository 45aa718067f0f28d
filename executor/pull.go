package executor

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// pullPolicy is the job's own pull_policy when the TOML allows it, else the
// TOML default.
func (e *Executor) pullPolicy(img string, asked []string) (string, error) {
	if len(asked) == 0 {
		return e.Settings.Job.PullPolicy, nil
	}
	for _, p := range asked { // GitLab sends them in the job's order of preference
		if slices.Contains(e.Settings.Job.AllowedPullPolicies, p) {
			return p, nil
		}
	}
	return "", failure.Buildf("image %s asks for pull_policy %v, but this runner allows only %v (job.allowed_pull_policies in berth.toml): change pull_policy in .gitlab-ci.yml",
		img, asked, e.Settings.Job.AllowedPullPolicies)
}

// ensureImage makes ref available on the engine according to policy. It
// reports whether it pulled.
func (e *Executor) ensureImage(ctx context.Context, ref, policy string) (bool, error) {
	if _, err := reference.ParseNormalizedNamed(ref); err != nil {
		return false, failure.Buildf("image %q is not a valid image reference: %v: fix image: in .gitlab-ci.yml", ref, err)
	}
	if policy != settings.PullAlways {
		_, err := e.Engine.ImageInspect(ctx, ref)
		if err == nil {
			return false, nil
		}
		if !errdefs.IsNotFound(err) {
			return false, failure.Systemf("inspect image %s: %w", ref, err)
		}
		if policy == settings.PullNever {
			return false, failure.Buildf("image %s is not on the engine and the pull policy is never: build or pull it on the runner host first, or change pull_policy", ref)
		}
	}
	return true, e.pull(ctx, ref)
}

// ensureHelperImage makes the operator's helper image present, with the
// operator's pull policy and without the job's credentials. A helper image
// that cannot be had is the host's fault.
func (e *Executor) ensureHelperImage() error {
	ref := e.Settings.Job.HelperImage
	ctx := context.Background() // bounded by the pull's own timeout
	if e.Settings.Job.PullPolicy != settings.PullAlways {
		if _, err := e.Engine.ImageInspect(ctx, ref); err == nil {
			return nil
		}
	}
	t := e.Now()
	if err := e.pullWith(ctx, ref, ""); err != nil {
		return failure.Systemf("helper image: %v (set job.helper_image in berth.toml to an image with git and bash that this engine can pull)", err)
	}
	e.stepf("helper image %s pulled (%s)", ref, since(t))
	return nil
}

func (e *Executor) pull(ctx context.Context, ref string) error {
	auth, err := e.registryAuth(ref)
	if err != nil {
		return failure.Systemf("encode registry credentials for %s: %w", ref, err)
	}
	return e.pullWith(ctx, ref, auth)
}

// pullWith pulls with an encoded login; "" pulls anonymously.
func (e *Executor) pullWith(ctx context.Context, ref, auth string) error {
	if auth == "" {
		auth, _ = registry.EncodeAuthConfig(registry.AuthConfig{}) // the engine wants the header
	}
	// bound a pull that hangs on a dead registry
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	rc, err := e.Engine.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err == nil {
		err = engine.ReadProgress(rc)
		rc.Close()
	}
	if err == nil {
		return nil
	}
	msg := strings.TrimPrefix(e.redactErr(err), "Error response from daemon: ")
	if isMissingImage(err) {
		return failure.Buildf("image %s not found (%s): check the image name and tag in .gitlab-ci.yml, and that the registry has it", ref, msg)
	}
	return failure.Systemf("pull image %s: %s", ref, msg)
}

func isMissingImage(err error) bool {
	if errdefs.IsNotFound(err) {
		return true
	}
	s := strings.ToLower(err.Error())
	for _, hint := range []string{"not found", "manifest unknown", "repository does not exist", "pull access denied", "name unknown"} {
		if strings.Contains(s, hint) {
			return true
		}
	}
	return false
}

// registryAuth picks the payload's credentials for the image's registry.
func (e *Executor) registryAuth(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", err
	}
	domain := reference.Domain(named)
	for _, c := range e.Job.Credentials {
		if c.Type == "registry" && RegistryHost(c.URL) == domain {
			return registry.EncodeAuthConfig(registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: c.URL})
		}
	}
	// the engine wants the header even without credentials
	return registry.EncodeAuthConfig(registry.AuthConfig{})
}

// RegistryHost reduces "https://registry.example.com/" to its host[:port].
func RegistryHost(url string) string {
	url = strings.TrimPrefix(strings.TrimPrefix(url, "https://"), "http://")
	host, _, _ := strings.Cut(url, "/")
	if host == "index.docker.io" || host == "registry-1.docker.io" {
		return "docker.io"
	}
	return host
}

// redactErr renders an error without secrets.
func (e *Executor) redactErr(err error) string {
	return e.redactor.String(err.Error())
}
