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

// A line like "BenchmarkInvocation/config/berth-2  20  123 ns/op  3.9 median-ms",
// possibly with more metrics ("12 failed", "1 same-digest").
var (
	line   = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+\d+ ns/op(.*)$`)
	metric = regexp.MustCompile(`([\d.]+) ([a-z][a-z0-9-]*)`)
)

// goal is what a measure must meet: an absolute bound for berth, or a
// bound on the berth/bash ratio.
type goal struct {
	text     string
	maxMs    float64
	maxRatio float64
	minValue float64
}

// goals are keyed by measure and metric.
var goals = map[string]goal{
	"Invocation/config median-ms": {text: "≤ 15 ms", maxMs: 15},
	"TrivialJob median-ms":        {text: "no slower than bash (ratio ≤ 1.0)", maxRatio: 1.0},
	"Outage longest-gap-ms":       {text: "at most half the script's (ratio ≤ 0.5)", maxRatio: 0.5},
	"Release median-ms":           {text: "at most a tenth of the script's (ratio ≤ 0.1)", maxRatio: 0.1},
	"Release same-digest":         {text: "berth 1 (the tested digest)", minValue: 1},
	"Rollback median-ms":          {text: "under 2 s", maxMs: 2000},
	"KubeFailedRollout detect-ms": {text: "under 15 s", maxMs: 15000},
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
		for _, mm := range metric.FindAllStringSubmatch(m[2], -1) {
			row, side := name[:i]+" "+mm[2], name[i+1:]
			v, err := strconv.ParseFloat(mm[1], 64)
			if err != nil {
				return err
			}
			if samples[row] == nil {
				samples[row] = map[string][]float64{}
				order = append(order, row)
			}
			samples[row][side] = append(samples[row][side], v)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results with metrics in the input")
	}

	fmt.Fprintf(out, "# %s\n\n", title)
	fmt.Fprintf(out, "Written by `make bench` (bench/run.sh) on %s. Each row is one measure, taken for berth and for\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(out, "the shell-script way (`bench/bashdriver.sh`, the docker CLI) side by side in one run, on the same\n")
	fmt.Fprintf(out, "engine. Values are medians over the runs (-count), each itself a median over its iterations;\n")
	fmt.Fprintf(out, "`-ms` metrics are milliseconds. ratio = berth / script (below 1 means berth is faster or better).\n\n")
	for _, h := range header {
		fmt.Fprintf(out, "    %s\n", h)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| measure | metric | berth | script way | ratio | goal | met |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---|---|")
	failed := 0
	for _, row := range order {
		if strings.HasPrefix(row, "Fault/") || strings.HasPrefix(row, "Proxy") || strings.HasPrefix(row, "ExecPipeline") ||
			strings.HasSuffix(row, " outside-step-ms") {
			continue // tables of their own
		}
		berth, bash := median(samples[row]["berth"]), median(samples[row]["bash"])
		ratio := "-"
		if bash != 0 {
			ratio = fmt.Sprintf("%.2f", berth/bash)
		}
		g, ok := goals[row]
		met := ""
		if ok {
			pass := (g.maxMs == 0 || berth <= g.maxMs) && (g.maxRatio == 0 || (bash != 0 && berth/bash <= g.maxRatio)) && berth >= g.minValue
			met = "yes"
			if !pass {
				met = "**no**"
				failed++
			}
		}
		measure, unit, _ := strings.Cut(row, " ")
		script := "-" // a measure with no script counterpart
		if len(samples[row]["bash"]) > 0 {
			script = fmt.Sprintf("%.1f", bash)
		}
		fmt.Fprintf(out, "| %s | %s | %.1f | %s | %s | %s | %s |\n", measure, unit, berth, script, ratio, g.text, met)
	}
	failed += helperCost(out, samples, order)
	failed += proxyTable(out, samples, order)
	execTable(out, samples)
	failed += faultTable(out, samples, order)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "What each measure is:")
	fmt.Fprintln(out, "- `Invocation/config`: `berth config` alone: read berth.toml and the job payload, print JSON.")
	fmt.Fprintln(out, "- `Invocation/prepare`: network, job container and its helper container started (images present).")
	fmt.Fprintln(out, "- `ComposeHelper/load`: what a compose deploy pays on top: start berth-compose (docker compose linked")
	fmt.Fprintln(out, "  in) and load a one-service project. berth itself does not link compose; no script counterpart.")
	fmt.Fprintln(out, "- `Invocation/run-empty`: an empty `build_script` streamed into the job container.")
	fmt.Fprintln(out, "- `Invocation/cleanup`: job containers and network removed.")
	fmt.Fprintln(out, "- `TrivialJob`: a whole `echo ok` test job through the real gitlab-runner, request to final state.")
	fmt.Fprintln(out, "- `DeployJob`: (a) a master deploy job through the runner: berth's native stage (build, push, health-gated")
	fmt.Fprintln(out, "  replacement) against the shell lines `docker build`, `docker push`, `docker rm -f web`, `docker run -d -p 6000:5000`.")
	fmt.Fprintln(out, "  `outside-step-ms`: the job's time besides its `step_script` section (from the trace's timestamps), which")
	fmt.Fprintln(out, "  is where the helper container works; the native deploy step itself runs on the runner host.")
	fmt.Fprintln(out, "- `Outage`: (b) a prober on 127.0.0.1:6000 every 2 ms during one replacement: failed requests and the")
	fmt.Fprintln(out, "  longest gap between two answered ones; berth's switch inside the anchor's namespace against `rm -f` + `run`.")
	fmt.Fprintln(out, "- `Release`: (c) berth's registry-side promotion against `docker build` + `docker push` of the tag;")
	fmt.Fprintln(out, "  `same-digest` is 1 when the tag's digest is the tested image's.")
	fmt.Fprintln(out, "- `Rollback`: (d) back to the previous version until it answers: berth restarts the kept container;")
	fmt.Fprintln(out, "  the script way runs the previous image again with `rm -f` + `run`.")
	fmt.Fprintln(out, "- `ProxyOutage`: one deploy under 10 keep-alive clients until 10,000 requests at least: failed requests")
	fmt.Fprintln(out, "  and the longest wait of a client between two answers; berth behind its Caddy proxy, berth in the anchor,")
	fmt.Fprintln(out, "  and `rm -f` + `run`.")
	fmt.Fprintln(out, "- `ProxyBroken`: a release that never answers, deployed under the same load: requests that failed until")
	fmt.Fprintln(out, "  the old version served again (health_timeout 3 s); the script way, over the same 3 s, stays down after.")
	fmt.Fprintln(out, "  `proxy-fresh`: the proxy's deploy with every request on a new connection, as browsers often open them.")
	fmt.Fprintln(out, "  `floor`: the same load through the same proxy while the engine only starts and removes one container")
	fmt.Fprintln(out, "  beside it (no berth, no switch): the least engine work a deploy does, and the wait it alone causes.")
	fmt.Fprintln(out, "- `ProxyCost`: 10 keep-alive clients for 3 s through the proxy and straight to the app's published port;")
	fmt.Fprintln(out, "  both cross docker-proxy, which serves published ports on loopback. References without it, as clients")
	fmt.Fprintln(out, "  from elsewhere reach a host: `direct-ip`, the app at its own address; `caddy-host`, the proxy's image")
	fmt.Fprintln(out, "  alone on the host's network forwarding to that address, the least any Caddy in front costs here.")
	fmt.Fprintln(out, "- `DeployJob` anchor: the same deploy job with `ports_on = \"anchor\"`, the default before the proxy.")
	fmt.Fprintln(out, "- `KubeFailedRollout`: a rollout that can never succeed (no room on the node for the new pod) on the")
	fmt.Fprintln(out, "  test control plane: `detect-ms` until it is known to fail, `rollback-ms` until the previous version")
	fmt.Fprintln(out, "  is available again. berth's kube driver against `kubectl set image` + `rollout status --timeout="+"30s"+"`,")
	fmt.Fprintln(out, "  then `rollout undo` + `rollout status`.")
	if failed > 0 {
		fmt.Fprintf(out, "\n%d goal(s) not met.\n", failed)
	}
	return nil
}

// faultTable is the table of faults: each fault and driver, whether the
// environment served again by itself, and how soon.
func faultTable(out io.Writer, samples map[string]map[string][]float64, order []string) int {
	type cell struct{ fault, driver string }
	var cells []cell
	for _, row := range order {
		if !strings.HasPrefix(row, "Fault/") || !strings.HasSuffix(row, " serving-s") {
			continue
		}
		for _, driver := range sortedSides(samples[row]) {
			cells = append(cells, cell{strings.TrimSuffix(strings.TrimPrefix(row, "Fault/"), " serving-s"), driver})
		}
	}
	if len(cells) == 0 {
		return 0
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "### Faults")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "A fault struck a deploy through the real runner (berth paused at the named step for it); seconds from")
	fmt.Fprintln(out, "the fault until the environment answers again, by itself. Goal: every cell serving, none needs a human.")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| fault | driver | outcome | seconds until serving | met |")
	fmt.Fprintln(out, "|---|---|---|---:|---|")
	failed := 0
	for _, c := range cells {
		secs := median(samples["Fault/"+c.fault+" serving-s"][c.driver])
		human := median(samples["Fault/"+c.fault+" needs-human"][c.driver])
		outcome, met := "serving", "yes"
		if human > 0 {
			outcome, met = "needs a human", "**no**"
			failed++
		}
		fmt.Fprintf(out, "| %s | %s | %s | %.1f | %s |\n", c.fault, c.driver, outcome, secs, met)
	}
	return failed
}

func sortedSides(m map[string][]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// proxyGoals are the proxy's goals (issue 13): on the proxy side, alone or
// against the side named in against.
var proxyGoals = map[string]struct {
	text    string
	against string
	ok      func(proxy, other float64) bool
}{
	"ProxyOutage failed":         {"0 failed", "", func(p, _ float64) bool { return p == 0 }},
	"ProxyOutage longest-gap-ms": {"≤ 50 ms", "", func(p, _ float64) bool { return p <= 50 }},
	"ProxyBroken failed":         {"0 failed", "", func(p, _ float64) bool { return p == 0 }},
	"ProxyCost req-per-s":        {"≥ 0.7 × direct", "direct", func(p, d float64) bool { return p >= 0.7*d }},
	"ProxyCost p99-ms":           {"≤ direct + 2 ms", "direct", func(p, d float64) bool { return p <= d+2 }},
}

// proxyTable is the table of the proxy against the anchor, the script way
// and the app's port straight, and the deploy job behind it against the
// anchor's.
func proxyTable(out io.Writer, samples map[string]map[string][]float64, order []string) int {
	var rows []string
	for _, row := range order {
		if strings.HasPrefix(row, "Proxy") {
			rows = append(rows, row)
		}
	}
	if len(rows) == 0 {
		return 0
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "### The proxy")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "berth behind its Caddy proxy (`ports_on = \"proxy\"`, the default) against berth in the anchor, the")
	fmt.Fprintln(out, "script way (`rm -f` + `run`) and, for the proxy's cost, the app's own published port; same run, same engine.")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| measure | metric | proxy | anchor | script way | direct | goal | met |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---|---|")
	cell := func(row, side string) string {
		if len(samples[row][side]) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", median(samples[row][side]))
	}
	failed := 0
	for _, row := range rows {
		measure, unit, _ := strings.Cut(row, " ")
		g, ok := proxyGoals[row]
		met := ""
		if ok {
			met = "yes"
			if !g.ok(median(samples[row]["proxy"]), median(samples[row][g.against])) {
				met = "**no**"
				failed++
			}
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", measure, unit, cell(row, "proxy"), cell(row, "anchor"), cell(row, "bash"), cell(row, "direct"), g.text, met)
	}
	if dj := samples["DeployJob median-ms"]; len(dj["anchor"]) > 0 {
		p, a := median(dj["berth"]), median(dj["anchor"])
		fmt.Fprintf(out, "| DeployJob | median-ms | %.1f | %.1f | %s | - | the proxy's checks only (%+.0f ms) | |\n", p, a, cell("DeployJob median-ms", "bash"), p-a)
	}
	proxyReferences(out, samples, rows)
	return failed
}

// proxyReferences lists the sides of the proxy's measures that are not
// berth's nor what it is compared with: what the same load gets with no
// switch, or without docker-proxy, which bounds what any proxy can reach.
func proxyReferences(out io.Writer, samples map[string]map[string][]float64, rows []string) {
	compared := []string{"proxy", "anchor", "bash", "direct"}
	var lines []string
	for _, row := range rows {
		measure, unit, _ := strings.Cut(row, " ")
		for _, side := range sortedSides(samples[row]) {
			if !slices.Contains(compared, side) {
				lines = append(lines, fmt.Sprintf("| %s | %s | %s | %.1f |", measure, side, unit, median(samples[row][side])))
			}
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "References, same run (what each is: below):")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| measure | reference | metric | value |")
	fmt.Fprintln(out, "|---|---|---|---:|")
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}
}

// execTable is berth exec's pipeline against itself one job at a time and
// against the runner job by job.
func execTable(out io.Writer, samples map[string]map[string][]float64) {
	row := samples["ExecPipeline median-ms"]
	if len(row) == 0 {
		return
	}
	j4, j1, runner := median(row["jobs4"]), median(row["jobs1"]), median(row["runner"])
	fmt.Fprintln(out)
	fmt.Fprintln(out, "### berth exec")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Six independent busybox jobs (`echo`, `sleep 1`): `berth exec --jobs 4`, `--jobs 1`, and the same jobs one")
	fmt.Fprintln(out, "by one through the real gitlab-runner with berth as its executor.")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| berth exec --jobs 4 | --jobs 1 | runner, job by job | ratio --jobs 4 / --jobs 1 | ratio --jobs 4 / runner |")
	fmt.Fprintln(out, "|---:|---:|---:|---:|---:|")
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	fmt.Fprintf(out, "| %.0f ms | %.0f ms | %.0f ms | %s | %s |\n", j4, j1, runner, ratio(j4, j1), ratio(j4, runner))
}

// costGoals bound what the helper container adds to a job, in ms.
// The deploy job's is judged besides its deploy step, which runs on the
// runner host with or without the helper.
var costGoals = map[string]float64{"TrivialJob median-ms": 300, "DeployJob outside-step-ms": 300}

// helperCost is the table of berth against berth before the helper
// container (side "before"), where the run measured it.
func helperCost(out io.Writer, samples map[string]map[string][]float64, order []string) int {
	var rows []string
	for _, row := range order {
		if len(samples[row]["before"]) > 0 && strings.HasSuffix(row, "-ms") {
			rows = append(rows, row)
		}
	}
	if len(rows) == 0 {
		return 0
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "### What the helper container costs")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "berth against berth before the helper container (commit `BERTH_BEFORE_REF` of bench/run.sh, whose")
	fmt.Fprintln(out, "sources, cache and artifact stages ran with the runner host's bash), same run, same engine; the deploy")
	fmt.Fprintln(out, "job compared with its anchor, as berth before deployed.")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| measure | metric | berth | berth before | cost | goal | met |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---|---|")
	failed := 0
	for _, row := range rows {
		now, before := median(samples[row]["berth"]), median(samples[row]["before"])
		if len(samples[row]["anchor"]) > 0 { // berth before had the anchor: like for like
			now = median(samples[row]["anchor"])
		}
		measure, unit, _ := strings.Cut(row, " ")
		goalText, met := "", ""
		if max, ok := costGoals[row]; ok {
			goalText, met = fmt.Sprintf("cost ≤ %.0f ms", max), "yes"
			if now-before > max {
				met = "**no**"
				failed++
			}
		}
		fmt.Fprintf(out, "| %s | %s | %.1f | %.1f | %+.1f | %s | %s |\n", measure, unit, now, before, now-before, goalText, met)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Why: a test job had a container before and only gains its helper beside it, which shares the job")
	fmt.Fprintln(out, "container's network namespace. A native deploy job had none. Its helper now joins a network namespace")
	fmt.Fprintln(out, "berth made ahead (`job.helper_spares`), so starting it is ~150 ms of runc on dockerd 20.10, where a")
	fmt.Fprintln(out, "namespace of its own (a sandbox and an endpoint on `berth-helpers`) made it ~450 ms; cleanup only stops")
	fmt.Fprintln(out, "it, and `berth spares`, detached, removes it and its spare and makes the next spare: ~0.7 s of engine")
	fmt.Fprintln(out, "work that the next job in this back-to-back run shares the 2 cores with. A spare serves one job and is")
	fmt.Fprintln(out, "never reused (docs/security.md). The rest is a few ms a stage through the helper's socket, and git in")
	fmt.Fprintln(out, "a container rather than on the host. `outside-step-ms` leaves out the deploy step, native on the host")
	fmt.Fprintln(out, "either way, which since berth before also journals its switch, checks ownership and digests.")
	fmt.Fprintln(out, "The helper is also why a trivial job can be slower than the bash driver (TrivialJob in the first")
	fmt.Fprintln(out, "table): that driver, like berth before, runs `get_sources`, caches and artifacts with bash on the")
	fmt.Fprintln(out, "runner host, where a job's hooks would run as the runner's user; berth pays the helper's start instead.")
	return failed
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
