package local

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Artifacts and caches as berth exec passes them from job to job: a tar of
// the matching files of a job's checkout, made and unpacked by berth's own
// binary in the job's helper container (`berth archive pack|unpack`), so
// that the job's files, links included, are only ever read and written
// inside its containers. A link is archived as a link, never followed.

// PackOptions say what goes into an archive.
type PackOptions struct {
	Paths     []string // globs relative to the directory (*, **, ?)
	Exclude   []string
	Untracked bool // files git does not track (nor ignore)
}

// Pack writes the files of dir that o names to out, and how many.
func Pack(dir string, o PackOptions, out io.Writer) (int, error) {
	var include, exclude []*regexp.Regexp
	for _, p := range o.Paths {
		re, err := pathRegexp(p)
		if err != nil {
			return 0, err
		}
		include = append(include, re)
	}
	for _, p := range o.Exclude {
		re, err := pathRegexp(p)
		if err != nil {
			return 0, err
		}
		exclude = append(exclude, re)
	}
	untracked := map[string]bool{}
	if o.Untracked {
		cmd := exec.Command("git", "-C", dir, "ls-files", "--others", "--exclude-standard", "-z")
		b, err := cmd.Output()
		if err != nil {
			return 0, fmt.Errorf("untracked: git ls-files: %w", err)
		}
		for _, f := range strings.Split(string(b), "\x00") {
			if f != "" {
				untracked[f] = true
			}
		}
	}
	tw := tar.NewWriter(out)
	n := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." || rel == ".git" && e.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		if e.IsDir() {
			return nil
		}
		if !untracked[rel] && !matchAny(include, rel) || matchAny(exclude, rel) {
			return nil
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() {
			return nil
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name, h.Uid, h.Gid, h.Uname, h.Gname = rel, 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		n++
		if link != "" {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return n, err
	}
	return n, tw.Close()
}

// pathRegexp matches a path and everything below it, as artifacts: paths
// and cache: paths do.
func pathRegexp(p string) (*regexp.Regexp, error) {
	p = strings.TrimSuffix(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	re, err := globRegexp(p)
	if err != nil {
		return nil, err
	}
	return regexp.Compile(strings.TrimSuffix(re.String(), "$") + "(/.*)?$")
}

func matchAny(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

// Unpack writes an archive's files under dir. A name that leaves dir, or
// a path through a link, is refused: an archive holds a job's files.
func Unpack(r io.Reader, dir string) (int, error) {
	tr := tar.NewReader(r)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		name := path.Clean(h.Name)
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return n, fmt.Errorf("%s leaves the directory", h.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		if err := noLinkOnTheWay(dir, filepath.Dir(target)); err != nil {
			return n, err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return n, err
		}
		_ = os.Remove(target)
		switch h.Typeflag {
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, target)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fs.FileMode(h.Mode)&0o777); err == nil {
				_, err = io.Copy(f, tr)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
		default:
			continue
		}
		if err != nil {
			return n, err
		}
		n++
	}
}

// noLinkOnTheWay refuses a directory under root reached through a link.
func noLinkOnTheWay(root, dir string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return err
	}
	cur := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." || part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		if fi, err := os.Lstat(cur); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a link: the archive does not write through it", cur)
		}
	}
	return nil
}

// Dotenv reads a dotenv report from an archive: KEY=VALUE lines of the
// files named, as GitLab reads them (at most 50 variables, 5 KB a file).
func Dotenv(r io.Reader, files []string) ([]Var, error) {
	tr := tar.NewReader(r)
	var out []Var
	keyRe := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if h.Typeflag != tar.TypeReg || !contains(files, h.Name) {
			continue
		}
		if h.Size > 5*1024 {
			return out, fmt.Errorf("dotenv report %s is larger than 5 KB", h.Name)
		}
		sc := bufio.NewScanner(tr)
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			if !ok || !keyRe.MatchString(k) {
				return out, fmt.Errorf("dotenv report %s: %q is not KEY=VALUE", h.Name, l)
			}
			out = append(out, Var{k, strings.Trim(v, `"'`)})
			if len(out) > 50 {
				return out, fmt.Errorf("dotenv report %s: more than 50 variables", h.Name)
			}
		}
	}
}
