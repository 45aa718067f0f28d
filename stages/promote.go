package stages

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/berthci/berth/stages/driver"
	"github.com/berthci/berth/stages/target"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Registry talks to a registry directly, for what needs no engine: reading
// labels and digests, and copying a manifest to a new tag.
type Registry struct {
	Creds   *target.Credentials
	Out     io.Writer
	Retries int
	Sleep   func(time.Duration)
}

func (r *Registry) options(ctx context.Context, ref string) ([]remote.Option, error) {
	a, _, err := r.Creds.For(ref)
	if err != nil {
		return nil, err
	}
	auth := authn.Anonymous
	if a.Username != "" || a.IdentityToken != "" || a.RegistryToken != "" {
		auth = authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password,
			IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken})
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithAuth(auth)}, nil
}

// Digest resolves a tag to its manifest digest; ok is false when the tag
// does not exist.
func (r *Registry) Digest(ctx context.Context, ref string) (digest string, ok bool, err error) {
	err = r.withRef(ctx, ref, func(tag name.Reference, opts []remote.Option) error {
		d, err := remote.Head(tag, opts...)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		digest, ok = d.Digest.String(), true
		return nil
	})
	return digest, ok, err
}

// Revision reads the revision label of the image a tag points to; ok is
// false when the tag does not exist.
func (r *Registry) Revision(ctx context.Context, ref string) (rev, digest string, ok bool, err error) {
	err = r.withRef(ctx, ref, func(tag name.Reference, opts []remote.Option) error {
		desc, err := remote.Get(tag, opts...)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		img, err := imageOf(desc, opts)
		if err != nil {
			return err
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			return err
		}
		rev, digest, ok = cfg.Config.Labels[LabelRevision], desc.Digest.String(), true
		return nil
	})
	return rev, digest, ok, err
}

// imageOf is the image of a descriptor; for an index, its first manifest
// (the labels are the same for every platform of one build).
func imageOf(desc *remote.Descriptor, opts []remote.Option) (v1.Image, error) {
	if !desc.MediaType.IsIndex() {
		return desc.Image()
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) == 0 {
		return nil, errors.New("empty image index")
	}
	return idx.Image(m.Manifests[0].Digest)
}

// Tag copies the manifest of from to the tag to, registry-side: no layer is
// pulled or pushed and the digest stays the same.
func (r *Registry) Tag(ctx context.Context, from, to string) (string, error) {
	var digest string
	err := r.withRef(ctx, from, func(src name.Reference, opts []remote.Option) error {
		dst, err := name.NewTag(to)
		if err != nil {
			return err
		}
		desc, err := remote.Get(src, opts...)
		if err != nil {
			return err
		}
		if err := remote.Tag(dst, desc, opts...); err != nil {
			return err
		}
		digest = desc.Digest.String()
		return nil
	})
	if err != nil {
		return "", registryFault(err, "tag %s as %s in the registry: %v", from, to, err)
	}
	return digest, nil
}

// withRef parses ref and finds its login for f, retrying transient errors.
// One login serves both ends of a promotion: they are one repository.
func (r *Registry) withRef(ctx context.Context, ref string, f func(name.Reference, []remote.Option) error) error {
	return driver.Retry(ctx, r.Retries, r.Sleep, r.Out, "registry error", func() error {
		parsed, err := name.ParseReference(ref)
		if err != nil {
			return err
		}
		opts, err := r.options(ctx, ref)
		if err != nil {
			return err
		}
		return f(parsed, opts)
	})
}

func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}
