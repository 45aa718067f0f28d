package local

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// corpusDir is ../shared/corpus/gitlab-ci: real public pipelines, read
// where they are (other projects' files stay theirs), never copied here.
func corpusDir(t *testing.T) string {
	shared := os.Getenv("BERTH_SHARED")
	if shared == "" {
		shared = filepath.Join("..", "..", "..", "shared")
	}
	dir := filepath.Join(shared, "corpus", "gitlab-ci")
	if _, err := os.Stat(filepath.Join(dir, "INDEX.tsv")); err != nil {
		if os.Getenv("BERTH_REQUIRE_RIG") == "1" {
			t.Fatalf("the corpus is needed: %v", err)
		}
		t.Skipf("no corpus at %s (set BERTH_SHARED)", dir)
	}
	return dir
}

type corpusEntry struct {
	dir, branch, status string
	expect, absent      []string // "STAGE » JOB"
	vars                []string
	refusal             []string
}

func readIndex(t *testing.T, dir string) []corpusEntry {
	f, err := os.Open(filepath.Join(dir, "INDEX.tsv"))
	require.NoError(t, err)
	defer f.Close()
	split := func(s string) []string {
		var out []string
		for _, p := range strings.Split(s, " | ") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	var out []corpusEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for first := true; sc.Scan(); first = false {
		c := strings.Split(sc.Text(), "\t")
		if first || len(c) < 9 {
			continue
		}
		out = append(out, corpusEntry{dir: c[0], branch: c[1], status: c[4], expect: split(c[5]), absent: split(c[6]),
			vars: strings.Fields(c[7]), refusal: split(c[8])})
	}
	return out
}

// planCorpus is what `berth exec --list` does for an entry: the plan's
// "STAGE » JOB" lines, or the refusal.
func planCorpus(dir string, e corpusEntry) (map[string]bool, error) {
	repo := filepath.Join(dir, e.dir)
	ref := Ref{Name: e.branch}
	ctx := &Context{Ref: ref, Repo: repo, Vars: PredefinedForRef(ref, "corpus/"+strings.ToLower(e.dir), e.branch)}
	for _, kv := range e.vars {
		k, v, _ := strings.Cut(kv, "=")
		ctx.Vars[k] = v
	}
	p, err := Load(repo, ".gitlab-ci.yml", ctx)
	if err != nil {
		return nil, err
	}
	pl, err := p.Plan(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, pj := range pl.Jobs {
		key := pj.Job.Stage + " » " + pj.Job.Name
		if pj.When == "manual" {
			key += " (manual)"
		}
		out[key] = true
	}
	return out, nil
}

// The share of the corpus entries GitLab plans that berth exec plans too,
// listing a job GitLab would and none it would not; the entries that need
// the network are refused by name. Goal: 90% (docs/exec.md).
func TestCorpusCoverage(t *testing.T) {
	dir := corpusDir(t)
	ok, planned := 0, 0
	var misses []string
	for _, e := range readIndex(t, dir) {
		switch e.status {
		case "ok":
			ok++
			jobs, err := planCorpus(dir, e)
			if err != nil {
				misses = append(misses, fmt.Sprintf("%s: refused: %v", e.dir, err))
				continue
			}
			hit := false
			for _, x := range e.expect {
				hit = hit || jobs[x]
			}
			var wrong []string
			for _, x := range e.absent {
				if jobs[x] {
					wrong = append(wrong, x)
				}
			}
			if !hit || len(wrong) > 0 {
				var got []string
				for j := range jobs {
					got = append(got, j)
				}
				misses = append(misses, fmt.Sprintf("%s: want one of %v, not %v; planned %v", e.dir, e.expect, wrong, got))
				continue
			}
			planned++
		case "network":
			_, err := planCorpus(dir, e)
			if assert.Error(t, err, "%s needs the network", e.dir) && len(e.refusal) > 0 {
				named := false
				for _, r := range e.refusal {
					named = named || strings.Contains(err.Error(), r)
				}
				assert.True(t, named, "%s: the refusal names what it needs: %v", e.dir, err)
			}
		}
	}
	share := float64(planned) / float64(ok)
	t.Logf("berth exec plans %d of %d corpus pipelines (%.0f%%)", planned, ok, 100*share)
	for _, m := range misses {
		t.Log(m)
	}
	assert.GreaterOrEqual(t, share, 0.9, "at least 90% of the corpus")
}
