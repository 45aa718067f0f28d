package stages

// fileDriver is the smallest environment driver berth could have, built as
// docs/drivers.md says: its "target" is a directory, what serves is a
// file, its history a JSON ledger beside it and its lock a file created
// exclusively. It uses the shared pieces of stages/driver (the lock wait,
// the lock labels, the rollback choice, steps with undos, entries and
// records) and nothing else of berth. It is not in the binary: it proves
// the contract is enough, and is the stage logic's fake driver.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
	"github.com/berthci/berth/stages/driver"
)

type fileDriver struct {
	Env string
	Dir string // the target
	Out io.Writer
	// Healthy decides whether a release comes up; nil: all do.
	Healthy func(r driver.Release) bool
}

var _ driver.Driver = (*fileDriver)(nil)

// fileLedger is what the target records.
type fileLedger struct {
	Owner   string         `json:"owner,omitempty"`
	Entries []driver.Entry `json:"entries,omitempty"`
}

func (d *fileDriver) path(name string) string { return filepath.Join(d.Dir, name) }

func (d *fileDriver) read() (fileLedger, error) {
	var l fileLedger
	b, err := os.ReadFile(d.path("ledger.json"))
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, failure.Systemf("%s: read the ledger: %w", d.Env, err)
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, failure.Systemf("%s: the ledger is damaged (%v): remove %s", d.Env, err, d.path("ledger.json"))
	}
	return l, nil
}

func (d *fileDriver) write(l fileLedger) error {
	b, _ := json.Marshal(l)
	if err := os.WriteFile(d.path("ledger.json"), b, 0o644); err != nil {
		return failure.Systemf("%s: write the ledger: %w", d.Env, err)
	}
	return nil
}

// Lock is driver.WaitLock over a file that only one can create.
func (d *fileDriver) Lock(ctx context.Context, h driver.Holder, timeout time.Duration) (func(), error) {
	lock := d.path("lock")
	labels, _ := json.Marshal(driver.LockLabels(d.Env, d.Env, h, time.Now()))
	err := driver.WaitLock(ctx, driver.LockOps{
		Take: func(context.Context) (bool, error) {
			f, err := os.OpenFile(lock, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if errors.Is(err, os.ErrExist) {
				return false, nil
			}
			if err != nil {
				return false, failure.Systemf("%s: take the lock: %w", d.Env, err)
			}
			defer f.Close()
			_, err = f.Write(labels)
			return err == nil, err
		},
		Look: func(context.Context) (driver.LockState, bool, error) {
			b, err := os.ReadFile(lock)
			if errors.Is(err, os.ErrNotExist) {
				return driver.LockState{}, true, nil
			}
			var l map[string]string
			if err != nil || json.Unmarshal(b, &l) != nil {
				return driver.LockState{}, false, failure.Systemf("%s: read the lock %s: remove it", d.Env, lock)
			}
			held := driver.HolderOfLabels(l)
			return driver.LockState{Holder: held.String(), Since: l[driver.LabelLockSince], Stale: held.Gone(time.Now())}, false, nil
		},
		TakeOver: func(context.Context) (bool, error) { return os.Remove(lock) == nil, nil },
	}, d.Out, d.Env, timeout)
	if err != nil {
		return nil, err
	}
	return func() { _ = os.Remove(lock) }, nil
}

// Deploy switches what serves as two steps with their undos.
func (d *fileDriver) Deploy(ctx context.Context, r driver.Release) error {
	l, err := d.read()
	if err != nil {
		return err
	}
	before, _ := os.ReadFile(d.path("serving"))
	err = driver.Steps{What: "deploy of " + d.Env, Out: d.Out}.Run(ctx, []driver.Step{
		{Name: "switch",
			Do:   func(context.Context) error { return os.WriteFile(d.path("serving"), []byte(r.Image), 0o644) },
			Undo: func(context.Context) error { return os.WriteFile(d.path("serving"), before, 0o644) }},
		{Name: "health", Do: func(context.Context) error {
			if d.Healthy != nil && !d.Healthy(r) {
				return failure.Buildf("%s did not come up", r.Tag)
			}
			return nil
		}},
	})
	result := driver.ResultServing
	if err != nil {
		result = driver.ResultFailed
	}
	next := driver.EntryOf(r, "", result)
	if result == driver.ResultServing {
		for i := range l.Entries {
			if l.Entries[i].Result == driver.ResultServing {
				l.Entries[i].Result = driver.ResultReplaced
			}
		}
	}
	l.Entries = append([]driver.Entry{next}, l.Entries...)
	if werr := d.write(l); werr != nil {
		return werr
	}
	if err != nil {
		return fmt.Errorf("%w; the previous version serves again", err)
	}
	joblog.Step(d.Out, "%s: %s serves", d.Env, r.Tag)
	return nil
}

// Rollback lets driver.ChooseEntry pick, and deploys what it picked again.
func (d *fileDriver) Rollback(ctx context.Context, to, by string) (driver.Record, error) {
	l, err := d.read()
	if err != nil {
		return driver.Record{}, err
	}
	serving, _ := os.ReadFile(d.path("serving"))
	i, ok := driver.ChooseEntry(l.Entries, string(serving), to)
	if !ok {
		return driver.Record{}, failure.Buildf("%s has no version %q to roll back to", d.Env, to)
	}
	back := l.Entries[i]
	if err := os.WriteFile(d.path("serving"), []byte(back.Image), 0o644); err != nil {
		return driver.Record{}, failure.Systemf("%s: %w", d.Env, err)
	}
	for k := range l.Entries {
		switch {
		case k == i:
			l.Entries[k].Result = driver.ResultServing
		case l.Entries[k].Result == driver.ResultServing:
			l.Entries[k].Result = driver.RolledBackBy(by)
		}
	}
	return l.Entries[i].Record(), d.write(l)
}

func (d *fileDriver) History(context.Context) ([]driver.Record, error) {
	l, err := d.read()
	var recs []driver.Record
	for _, e := range l.Entries {
		recs = append(recs, e.Record())
	}
	return recs, err
}

func (d *fileDriver) Owner(_ context.Context, claim string) (string, error) {
	l, err := d.read()
	if err != nil || l.Owner != "" || claim == "" {
		return l.Owner, err
	}
	l.Owner = claim
	return claim, d.write(l)
}

// Recover has nothing to finish: a switch is one file write.
func (d *fileDriver) Recover(context.Context, int64) error { return nil }
