package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the generated part of docs/troubleshooting.md")

// message is one error berth can print: the format string of a Buildf or
// Systemf call, and where it is.
type message struct {
	class, format, where string
}

// messages finds every Buildf and Systemf format string in berth's code.
func messages(t *testing.T) []message {
	root := repoRoot()
	var out []message
	fset := token.NewFileSet()
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir() && (strings.HasPrefix(info.Name(), ".") || info.Name() == "examples" || info.Name() == "bench") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			name := ""
			switch fn := call.Fun.(type) {
			case *ast.SelectorExpr:
				name = fn.Sel.Name
			case *ast.Ident:
				name = fn.Name
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if (name != "Buildf" && name != "Systemf") || !ok {
				return true
			}
			format, err := strconv.Unquote(lit.Value)
			if err != nil || format == "%s" || format == "%v" {
				return true // a message made elsewhere
			}
			class := "job"
			if name == "Systemf" {
				class = "host"
			}
			rel, _ := filepath.Rel(root, path)
			out = append(out, message{class, format, rel})
			return true
		})
		return nil
	})
	require.NoError(t, err)
	sort.SliceStable(out, func(i, k int) bool { return out[i].where < out[k].where })
	return out
}

const generatedMark = "<!-- generated: go test ./cmd/berth -run TestTroubleshootingListsEveryMessage -update -->"

// TestTroubleshootingListsEveryMessage keeps docs/troubleshooting.md true to
// the code: every message berth can print is in its list.
func TestTroubleshootingListsEveryMessage(t *testing.T) {
	path := filepath.Join(repoRoot(), "docs", "troubleshooting.md")
	doc, err := os.ReadFile(path)
	require.NoError(t, err)
	head, _, found := strings.Cut(string(doc), generatedMark)
	require.True(t, found, "docs/troubleshooting.md lacks the generated mark")
	var b strings.Builder
	b.WriteString(generatedMark + "\n\n")
	b.WriteString("| message (`%…` is filled in) | whose fault | where |\n|---|---|---|\n")
	for _, m := range messages(t) {
		fault := "the job's (build failure)"
		if m.class == "host" {
			fault = "the host's (system failure)"
		}
		text := strings.NewReplacer("|", `\|`, "\n", " ", "`", "'").Replace(m.format)
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", text, fault, m.where)
	}
	want := head + b.String()
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(want), 0o644))
		return
	}
	assert.Equal(t, want, string(doc), "docs/troubleshooting.md is out of date: go test ./cmd/berth -run TestTroubleshootingListsEveryMessage -update")
}
