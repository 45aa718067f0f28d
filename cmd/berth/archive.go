package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/local"
)

// archive is `berth archive pack|unpack`, which berth exec runs in a job's
// helper container to hand artifacts and caches from job to job
// (executor/local/archive.go).
func (a *app) archive(args []string) error {
	usage := "usage: berth archive pack OUT DIR [--path GLOB]... [--exclude GLOB]... [--untracked] | unpack TAR DIR"
	if len(args) < 3 {
		return failure.Systemf("%s", usage)
	}
	switch args[0] {
	case "pack":
		fs := flag.NewFlagSet("pack", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var o local.PackOptions
		fs.Func("path", "", func(s string) error { o.Paths = append(o.Paths, s); return nil })
		fs.Func("exclude", "", func(s string) error { o.Exclude = append(o.Exclude, s); return nil })
		fs.BoolVar(&o.Untracked, "untracked", false, "")
		if err := fs.Parse(args[3:]); err != nil {
			return failure.Systemf("%s", usage)
		}
		f, err := os.Create(args[1])
		if err != nil {
			return failure.Systemf("archive: %w", err)
		}
		n, err := local.Pack(args[2], o, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return failure.Buildf("archive: %v", err)
		}
		fmt.Fprintf(a.stdout, "%d file(s)\n", n)
		return nil
	case "unpack":
		f, err := os.Open(args[1])
		if os.IsNotExist(err) {
			return nil // nothing kept yet
		}
		if err != nil {
			return failure.Systemf("archive: %w", err)
		}
		defer f.Close()
		n, err := local.Unpack(f, args[2])
		if err != nil {
			return failure.Buildf("archive %s: %v", args[1], err)
		}
		fmt.Fprintf(a.stdout, "%d file(s)\n", n)
		return nil
	}
	return failure.Systemf("%s", usage)
}
