package executor

import (
	"io"
	"sort"
	"strings"
	"sync"
)

// Redactor hides secrets in text that berth itself writes. The runner masks
// the job trace too, but the operator log and error messages are ours.
type Redactor struct {
	r *strings.Replacer
}

// Masked replaces a secret, as GitLab shows it.
const Masked = "[MASKED]"

// NewRedactor hides every non-trivial secret; longer ones first, so one that
// contains another is hidden whole.
func NewRedactor(secrets []string) *Redactor {
	var list []string
	for _, s := range secrets {
		if len(s) >= 4 { // GitLab refuses to mask shorter values; masking them would garble text
			list = append(list, s)
		}
	}
	sort.Slice(list, func(i, k int) bool { return len(list[i]) > len(list[k]) })
	pairs := make([]string, 0, 2*len(list))
	for _, s := range list {
		pairs = append(pairs, s, Masked)
	}
	return &Redactor{r: strings.NewReplacer(pairs...)}
}

// String hides secrets in s.
func (r *Redactor) String(s string) string {
	if r == nil || r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// Writer wraps w so that whole writes are redacted. Callers write whole
// lines, so a secret is never split across two writes.
func (r *Redactor) Writer(w io.Writer) io.Writer { return &redactWriter{r: r, w: w} }

type redactWriter struct {
	mu sync.Mutex
	r  *Redactor
	w  io.Writer
}

func (rw *redactWriter) Write(p []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if _, err := io.WriteString(rw.w, rw.r.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
