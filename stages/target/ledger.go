package target

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/berthci/berth/stages/driver"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthci/berth/executor/failure"
)

// The ledger is an environment's record on its target engine, written by
// berth alone, under the environment's lock: which project owns it, and
// which versions berth deployed there (for the container driver, by
// container id). A container counts as a kept version, a lock or a history
// entry because the ledger names it, never because it carries the right
// name or labels. It is a never-started container of berth's own empty
// image, holding one JSON file; design.md: state lives at the target.

const (
	// EmptyImage is the image of ledgers and locks: imported by berth, it
	// holds nothing and never runs.
	EmptyImage      = "berth-empty:1"
	ledgerFile      = "ledger.json"
	LabelLedger     = "berth.ledger" // the key of the environment's target
	labelEmptyImage = "berth.empty"
)

// LedgerName is the container that holds the ledger of a target key.
func LedgerName(key string) string { return "berth-ledger-" + key }

// Ledger is what berth knows of an environment at its target. Ledgers and
// locks are named after the target's key (the container's name, the
// compose project), the thing deployed, so every berth.toml that deploys
// it, on any runner host, shares them.
type Ledger struct {
	Env string `json:"env"`
	Key string `json:"key"`
	// Owner is the project (full path) that owns the environment: the
	// first one that deployed it, where berth.toml names no projects.
	Owner      string    `json:"owner,omitempty"`
	OwnerSince time.Time `json:"owner_since,omitzero"`
	// Entries are the deployments berth made, newest first.
	Entries []driver.Entry `json:"entries,omitempty"`
	// Switch is a change of what serves that has begun and not ended: a
	// berth killed mid-way leaves it for the next deploy, rollback or its
	// job's cleanup to finish (Recover).
	Switch *Switch `json:"switch,omitempty"`
}

// Switch is the journal of a change of what serves, written before its
// first step that touches what serves.
type Switch struct {
	Kind  string    `json:"kind"` // "deploy" or "rollback"
	Job   int64     `json:"job"`
	Since time.Time `json:"since"`
	// From served before (its container id, "" for nothing); To is being
	// switched to, and ToName what To was called before the switch.
	From   string       `json:"from,omitempty"`
	To     string       `json:"to,omitempty"`
	ToName string       `json:"to_name,omitempty"`
	Entry  driver.Entry `json:"entry"`
	// OldAnchor and NewAnchor are set when the anchor is made again.
	OldAnchor string `json:"old_anchor,omitempty"`
	NewAnchor string `json:"new_anchor,omitempty"`
	// Behind the proxy: the replicas that served (FromIDs) and those made
	// for the switch (ToIDs), replica 1 first.
	FromIDs []string `json:"from_ids,omitempty"`
	ToIDs   []string `json:"to_ids,omitempty"`
}

// Serving is the version that serves, if any.
func (l *Ledger) Serving() (driver.Entry, bool) {
	for _, v := range l.Entries {
		if v.Result == driver.ResultServing {
			return v, true
		}
	}
	return driver.Entry{}, false
}

// Push records v as the newest version; the one that served is marked
// with result (replaced, rolled back by X) when v serves now.
func (l *Ledger) Push(v driver.Entry, result string) {
	if v.Result == driver.ResultServing {
		for i := range l.Entries {
			if l.Entries[i].Result == driver.ResultServing {
				l.Entries[i].Result = result
			}
		}
	}
	l.Entries = append([]driver.Entry{v}, l.Entries...)
}

// Find is the version with the id.
func (l *Ledger) Find(id string) (*driver.Entry, bool) {
	for i := range l.Entries {
		if l.Entries[i].ID == id {
			return &l.Entries[i], true
		}
	}
	return nil, false
}

// LedgerEngine is what a ledger and a lock need from an engine: nothing
// of the driver's, only containers of berth's empty image.
type LedgerEngine interface {
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImageImport(ctx context.Context, src image.ImportSource, ref string, opts image.ImportOptions) (io.ReadCloser, error)
	ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, net *network.NetworkingConfig, platform *ocispec.Platform, name string) (container.CreateResponse, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerRemove(ctx context.Context, id string, opts container.RemoveOptions) error
	CopyToContainer(ctx context.Context, id, path string, content io.Reader, opts container.CopyToContainerOptions) error
	CopyFromContainer(ctx context.Context, id, src string) (io.ReadCloser, container.PathStat, error)
	ContainerStatPath(ctx context.Context, id, path string) (container.PathStat, error)
}

// EnsureEmptyImage makes berth's empty image present on the engine.
func EnsureEmptyImage(ctx context.Context, eng LedgerEngine) error {
	if _, err := eng.ImageInspect(ctx, EmptyImage); err == nil {
		return nil
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	_ = tw.WriteHeader(&tar.Header{Name: "berth/", Mode: 0o755, Typeflag: tar.TypeDir})
	_ = tw.Close()
	rc, err := eng.ImageImport(ctx, image.ImportSource{Source: &b, SourceName: "-"}, EmptyImage, image.ImportOptions{
		Changes: []string{"LABEL " + labelEmptyImage + "=1"},
	})
	if err == nil {
		err = drain(rc)
	}
	if err != nil {
		return failure.Systemf("import berth's empty image %s on the target: %w", EmptyImage, err)
	}
	return nil
}

// ReadLedger reads an environment's ledger; ok is false when there is
// none yet. A container of that name that berth did not make is refused.
func ReadLedger(ctx context.Context, eng LedgerEngine, env, key string) (l Ledger, ok bool, err error) {
	name := LedgerName(key)
	ins, err := eng.ContainerInspect(ctx, name)
	if errdefs.IsNotFound(err) {
		return Ledger{Env: env, Key: key}, false, nil
	}
	if err != nil {
		return Ledger{}, false, failure.Systemf("read the ledger of %s: %w", env, err)
	}
	if ins.Config == nil || ins.Config.Labels[LabelLedger] != key {
		return Ledger{}, false, failure.Systemf("a container named %s that berth did not make stands where %s's ledger belongs: remove it (docker rm %s)", name, env, name)
	}
	rc, _, err := eng.CopyFromContainer(ctx, ins.ID, "/"+ledgerFile)
	if errdefs.IsNotFound(err) {
		return Ledger{Env: env, Key: key}, false, nil
	}
	if err != nil {
		return Ledger{}, false, failure.Systemf("read the ledger of %s: %w", env, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return Ledger{}, false, failure.Systemf("read the ledger of %s: %w", env, err)
	}
	if err := json.NewDecoder(tr).Decode(&l); err != nil {
		return Ledger{}, false, failure.Systemf("the ledger of %s is damaged (%v): remove %s and deploy again", env, err, name)
	}
	l.Env, l.Key = env, key
	return l, true, nil
}

// WriteLedger stores the ledger, making its container the first time.
// Callers hold the environment's lock.
func WriteLedger(ctx context.Context, eng LedgerEngine, l Ledger) error {
	ctx = context.WithoutCancel(ctx) // a record is never left half written
	name := LedgerName(l.Key)
	ins, err := eng.ContainerInspect(ctx, name)
	var id string
	if errdefs.IsNotFound(err) {
		if err := EnsureEmptyImage(ctx, eng); err != nil {
			return err
		}
		made, cerr := eng.ContainerCreate(ctx, &container.Config{Image: EmptyImage, Entrypoint: []string{"ledger"},
			Labels: map[string]string{LabelLedger: l.Key, LabelLockEnv: l.Env}}, &container.HostConfig{NetworkMode: "none"}, nil, nil, name)
		if cerr != nil {
			return failure.Systemf("make the ledger of %s: %w", l.Env, cerr)
		}
		id = made.ID
	} else if err != nil {
		return failure.Systemf("write the ledger of %s: %w", l.Env, err)
	} else if ins.Config == nil || ins.Config.Labels[LabelLedger] != l.Key {
		return failure.Systemf("a container named %s that berth did not make stands where %s's ledger belongs: remove it (docker rm %s)", name, l.Env, name)
	} else {
		id = ins.ID
	}
	data, err := json.MarshalIndent(l, "", " ")
	if err != nil {
		return failure.Systemf("encode the ledger of %s: %w", l.Env, err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: ledgerFile, Mode: 0o644, Size: int64(len(data)), ModTime: time.Now()}); err != nil {
		return failure.Systemf("encode the ledger of %s: %w", l.Env, err)
	}
	_, _ = tw.Write(data)
	_ = tw.Close()
	if err := eng.CopyToContainer(ctx, id, "/", &b, container.CopyToContainerOptions{}); err != nil {
		return failure.Systemf("write the ledger of %s: %w", l.Env, err)
	}
	return nil
}

// LedgerStore reads an environment's ledger once and keeps what it read
// and wrote: a driver works under the environment's lock, so nothing else
// writes the ledger meanwhile, and each read costs a copy out of a
// container (~60 ms).
type LedgerStore struct {
	Engine   LedgerEngine
	Env, Key string
	cached   *Ledger
	ok       bool
}

// Read is the ledger, and whether one exists at the target.
func (s *LedgerStore) Read(ctx context.Context) (Ledger, bool, error) {
	if s.cached == nil {
		l, ok, err := ReadLedger(ctx, s.Engine, s.Env, s.Key)
		if err != nil {
			return l, ok, err
		}
		s.cached, s.ok = &l, ok
	}
	return s.cached.clone(), s.ok, nil
}

// Write stores the ledger at the target.
func (s *LedgerStore) Write(ctx context.Context, l Ledger) error {
	l.Env, l.Key = s.Env, s.Key
	if err := WriteLedger(ctx, s.Engine, l); err != nil {
		s.cached = nil // read it again next time
		return err
	}
	c := l.clone()
	s.cached, s.ok = &c, true
	return nil
}

// Owner is the environment's owner; claim records it when there is none.
func (s *LedgerStore) Owner(ctx context.Context, claim string) (string, error) {
	l, _, err := s.Read(ctx)
	if err != nil || l.Owner != "" || claim == "" {
		return l.Owner, err
	}
	l.Owner, l.OwnerSince = claim, time.Now().UTC()
	return claim, s.Write(ctx, l)
}

func (l Ledger) clone() Ledger {
	c := l
	c.Entries = append([]driver.Entry(nil), l.Entries...)
	if l.Switch != nil {
		sw := *l.Switch
		c.Switch = &sw
	}
	return c
}
