// Command report turns `go test -bench` output of package bench into the
// markdown of docs/BENCHMARKS.md: the median of each measure for berth and
// for the bash driver, their ratio, and the goal.
//
//	go test -run '^$' -bench . ./bench | go run ./bench/report -goals > docs/BENCHMARKS.md
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A line like "BenchmarkInvocation/config/berth-2  20  123 ns/op  3.9 median-ms".
var line = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+.*?([\d.]+) median-ms`)

// goal is what a measure must meet: an absolute bound for berth, or a
// bound on the berth/bash ratio.
type goal struct {
	text     string
	maxMs    float64
	maxRatio float64
}

var goals = map[string]goal{
	"Invocation/config": {text: "≤ 15 ms", maxMs: 15},
	"TrivialJob":        {text: "no slower than bash (ratio ≤ 1.0)", maxRatio: 1.0},
}

func main() {
	title := flag.String("title", "Benchmarks", "page title")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *title); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, title string) error {
	samples := map[string]map[string][]float64{} // measure -> side -> medians (one per -count)
	var order []string
	var header []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		l := sc.Text()
		if (strings.HasPrefix(l, "cpu:") || strings.HasPrefix(l, "goos:") || strings.HasPrefix(l, "goarch:")) && !slices.Contains(header, l) {
			header = append(header, l)
		}
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		name := strings.TrimPrefix(m[1], "Benchmark")
		i := strings.LastIndex(name, "/")
		if i < 0 {
			continue
		}
		measure, side := name[:i], name[i+1:]
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return err
		}
		if samples[measure] == nil {
			samples[measure] = map[string][]float64{}
			order = append(order, measure)
		}
		samples[measure][side] = append(samples[measure][side], v)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results with a median-ms metric in the input")
	}

	fmt.Fprintf(out, "# %s\n\n", title)
	fmt.Fprintf(out, "Written by `make bench` (bench/run.sh) on %s. Each row is one measure, taken for berth and for\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(out, "the shell-script way (`bench/bashdriver.sh`, the docker CLI) side by side in one run, on the same\n")
	fmt.Fprintf(out, "engine. Values are medians in milliseconds; ratio = berth / bash (below 1 means berth is faster).\n\n")
	for _, h := range header {
		fmt.Fprintf(out, "    %s\n", h)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| measure | berth (ms) | bash driver (ms) | ratio | goal | met |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---|---|")
	failed := 0
	for _, measure := range order {
		berth, bash := median(samples[measure]["berth"]), median(samples[measure]["bash"])
		ratio := berth / bash
		g, ok := goals[measure]
		met := ""
		if ok {
			pass := (g.maxMs == 0 || berth <= g.maxMs) && (g.maxRatio == 0 || ratio <= g.maxRatio)
			met = "yes"
			if !pass {
				met = "**no**"
				failed++
			}
		}
		fmt.Fprintf(out, "| %s | %.1f | %.1f | %.2f | %s | %s |\n", measure, berth, bash, ratio, g.text, met)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "What each measure is:")
	fmt.Fprintln(out, "- `Invocation/config`: `berth config` alone: read berth.toml and the job payload, print JSON.")
	fmt.Fprintln(out, "- `Invocation/prepare`: network, job container started (image present).")
	fmt.Fprintln(out, "- `Invocation/run-empty`: an empty `build_script` streamed into the job container.")
	fmt.Fprintln(out, "- `Invocation/cleanup`: job container and network removed.")
	fmt.Fprintln(out, "- `TrivialJob`: a whole `echo ok` test job through the real gitlab-runner, request to final state.")
	if failed > 0 {
		fmt.Fprintf(out, "\n%d goal(s) not met.\n", failed)
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
