package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/local"
)

// execOptions are berth exec's command line.
type execOptions struct {
	branch, tag, file   string
	manual, list, wtree bool
	jobs                int
	vars                []string
	names               []string
}

// exec runs jobs of the current repository's .gitlab-ci.yml through the
// same protocol calls the runner makes (config, prepare, run per stage,
// cleanup), each job when what it needs is done, up to --jobs at once:
// gitlab-runner exec, for berth, with artifacts and caches handed on.
func (a *app) exec(ctx context.Context, args []string) error {
	usage := "usage: berth exec [--ref BRANCH | --tag TAG] [--list] [--working-tree] [--jobs N] [--var KEY=VALUE]... [--manual] [JOB...]"
	o := execOptions{jobs: min(runtime.NumCPU(), 4)}
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.StringVar(&o.branch, "ref", "", "the branch to run for (default: the checked-out one)")
	fs.StringVar(&o.tag, "tag", "", "the tag to run for")
	fs.BoolVar(&o.manual, "manual", false, "run manual jobs too, as if started by hand")
	fs.StringVar(&o.file, "file", ".gitlab-ci.yml", "the pipeline file, relative to the repository")
	fs.BoolVar(&o.list, "list", false, "print the plan: the jobs that would run, in the order they start")
	fs.BoolVar(&o.wtree, "working-tree", false, "run the checkout as it is, uncommitted changes included")
	fs.IntVar(&o.jobs, "jobs", o.jobs, "how many ready jobs run at once")
	fs.Func("var", "a variable KEY=VALUE, as a project variable (repeatable)", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("%q is not KEY=VALUE", s)
		}
		o.vars = append(o.vars, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return failure.Buildf("%s", usage)
	}
	o.names = fs.Args()
	if o.branch != "" && o.tag != "" {
		return failure.Buildf("berth exec: give --ref or --tag, not both")
	}
	if o.jobs < 1 {
		return failure.Buildf("berth exec: --jobs wants 1 or more")
	}
	src, done, err := localSource(o.branch, o.tag, o.wtree)
	if err != nil {
		return err
	}
	defer done()
	lctx := execContext(src, o.vars)
	p, err := local.Load(src.Repo, o.file, lctx)
	if err != nil {
		return failure.Buildf("%v", err)
	}
	plan, err := p.Plan(lctx)
	if err != nil {
		return failure.Buildf("%s: %v", o.file, err)
	}
	if plan.Skipped != "" {
		fmt.Fprintf(a.stdout, "berth exec: %s\n", plan.Skipped)
		return nil
	}
	jobs, err := selectJobs(plan, o.names, o.manual)
	if err != nil {
		return err
	}
	if o.list {
		fmt.Fprint(a.stdout, listing(jobs, o.manual))
		return nil
	}
	if err := a.loadSettings(); err != nil {
		return err
	}
	var runnable []*local.Planned
	for _, pj := range jobs {
		if pj.When != "manual" || o.manual {
			runnable = append(runnable, pj)
		}
	}
	if len(runnable) == 0 {
		return failure.Buildf("no job of %s runs for %s", o.file, refText(src.Ref))
	}
	// pipelines number up in time, as GitLab's do: a deploy checks that no
	// newer pipeline of its flow deployed already
	pipeline := time.Now().UnixMilli()
	fmt.Fprintf(a.stdout, "berth exec: %d job(s) for %s at %.8s, pipeline %d, %d at once\n", len(runnable), refText(src.Ref), src.Sha, pipeline, o.jobs)
	store, err := os.MkdirTemp("", "berth-exec-pipeline-")
	if err != nil {
		return failure.Systemf("berth exec: %v", err)
	}
	defer os.RemoveAll(store)
	r := &pipelineRun{app: a, plan: plan, src: src, pipeline: pipeline, manual: o.manual, store: store, vars: o.vars, parallel: o.jobs}
	return r.run(ctx, runnable)
}

// execContext is what rules see: the ref's predefined variables, the
// commit's, and --var over them.
func execContext(src local.Source, vars []string) *local.Context {
	v := local.PredefinedForRef(src.Ref, src.Project, src.DefaultBranch)
	v["CI_COMMIT_SHA"], v["CI_COMMIT_SHORT_SHA"] = src.Sha, src.Sha[:min(8, len(src.Sha))]
	v["CI_COMMIT_MESSAGE"], v["CI_COMMIT_TITLE"] = src.Message, strings.SplitN(src.Message, "\n", 2)[0]
	for _, kv := range vars {
		k, val, _ := strings.Cut(kv, "=")
		v[k] = val
	}
	return &local.Context{Ref: src.Ref, Repo: src.Repo, Vars: v, Changed: src.Changed}
}

// selectJobs are the named jobs and what they need, or every planned job.
func selectJobs(plan *local.Plan, names []string, manual bool) ([]*local.Planned, error) {
	if len(names) == 0 {
		return plan.Jobs, nil
	}
	want := map[*local.Planned]bool{}
	var add func(pj *local.Planned, explicit bool)
	add = func(pj *local.Planned, explicit bool) {
		if want[pj] {
			return
		}
		want[pj] = true
		if pj.Job.Needs != nil { // what it needs runs first; stage order alone brings nothing
			for _, n := range pj.Needs {
				add(n, false)
			}
		}
	}
	for _, n := range names {
		found := false
		for _, pj := range plan.Jobs {
			if pj.Job.Name == n || pj.Job.Parallel != nil && pj.Job.Parallel.Base == n {
				found = true
				if pj.When == "manual" && !manual {
					return nil, failure.Buildf("job %s is manual: add --manual to run it as if started by hand", pj.Job.Name)
				}
				add(pj, true)
			}
		}
		if !found {
			return nil, failure.Buildf("no job %q runs for this ref (see its rules, only or except; berth exec --list shows the plan)", n)
		}
	}
	var out []*local.Planned
	for _, pj := range plan.Jobs {
		if want[pj] {
			out = append(out, pj)
		}
	}
	return out, nil
}

// listing is --list: one line per job in start order; manual ones wait for
// --manual.
func listing(jobs []*local.Planned, manual bool) string {
	plan := &local.Plan{Jobs: jobs}
	return plan.Listing()
}

// execJobBase is where berth exec's job ids start: far above any job id a
// GitLab hands out, so the containers, networks and builds dirs of a local
// run never collide with a real job's on the same host.
const execJobBase = 9_000_000_000_000_000

// execJobID is the id of the i-th job of a local pipeline.
func execJobID(pipeline int64, i int) int64 { return execJobBase + pipeline*1000 + int64(i) + 1 }

func refText(r local.Ref) string {
	if r.IsTag {
		return "tag " + r.Name
	}
	return "branch " + r.Name
}

// localSource is the repository around the current directory and the
// commit of the ref: with workingTree, a commit of the checkout as it is,
// under a ref of its own that done removes.
func localSource(branch, tag string, workingTree bool) (local.Source, func(), error) {
	done := func() {}
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", args...).Output()
		return strings.TrimSpace(string(out)), err
	}
	root, err := git("rev-parse", "--show-toplevel")
	if err != nil {
		return local.Source{}, done, failure.Buildf("berth exec runs in a git repository: %v", err)
	}
	ref := local.Ref{Name: branch}
	switch {
	case tag != "":
		ref = local.Ref{Name: tag, IsTag: true}
	case branch == "":
		if ref.Name, err = git("-C", root, "symbolic-ref", "--short", "HEAD"); err != nil {
			return local.Source{}, done, failure.Buildf("HEAD is not on a branch: give --ref BRANCH or --tag TAG")
		}
	}
	full := "refs/heads/" + ref.Name
	if ref.IsTag {
		full = "refs/tags/" + ref.Name
	}
	sha, err := git("-C", root, "rev-parse", "--verify", "-q", full+"^{commit}")
	if err != nil {
		return local.Source{}, done, failure.Buildf("no %s in %s", refText(ref), root)
	}
	src := local.Source{Repo: root, Project: "local/" + filepath.Base(root), Ref: ref, Sha: sha, User: os.Getenv("USER")}
	if src.User == "" {
		src.User = "berth-exec"
	}
	src.DefaultBranch = "main"
	if _, err := git("-C", root, "rev-parse", "--verify", "-q", "refs/heads/main"); err != nil {
		if _, err := git("-C", root, "rev-parse", "--verify", "-q", "refs/heads/master"); err == nil {
			src.DefaultBranch = "master"
		}
	}
	if workingTree {
		wt, err := workingTreeCommit(root)
		if err != nil {
			return local.Source{}, done, failure.Buildf("--working-tree: %v", err)
		}
		src.Sha, src.FetchRef = wt.sha, wt.ref
		done = wt.remove
	}
	src.Message, _ = git("-C", root, "log", "-1", "--format=%B", src.Sha)
	if parent, err := git("-C", root, "rev-parse", "--verify", "-q", src.Sha+"^"); err == nil {
		if out, err := git("-C", root, "diff", "--name-only", parent, src.Sha); err == nil {
			src.Changed = []string{}
			for _, f := range strings.Split(out, "\n") {
				if f != "" {
					src.Changed = append(src.Changed, f)
				}
			}
		}
	}
	return src, done, nil
}

type wtCommit struct {
	sha, ref string
	remove   func()
}

// workingTreeCommit commits the checkout as it is (tracked changes and
// files git does not ignore) without touching the index or HEAD, under a
// ref that get_sources can fetch.
func workingTreeCommit(root string) (wtCommit, error) {
	index, err := os.CreateTemp("", "berth-exec-index-")
	if err != nil {
		return wtCommit{}, err
	}
	index.Close()
	defer os.Remove(index.Name())
	run := func(args ...string) (string, error) {
		cmd := exec.Command("git", append([]string{"-C", root}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_INDEX_FILE="+index.Name(),
			"GIT_AUTHOR_NAME=berth exec", "GIT_AUTHOR_EMAIL=berth@localhost", "GIT_COMMITTER_NAME=berth exec", "GIT_COMMITTER_EMAIL=berth@localhost")
		out, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("git %s: %s", args[0], strings.TrimSpace(string(ee.Stderr)))
		}
		return strings.TrimSpace(string(out)), err
	}
	if _, err := run("read-tree", "HEAD"); err != nil {
		return wtCommit{}, err
	}
	if _, err := run("add", "-A"); err != nil {
		return wtCommit{}, err
	}
	tree, err := run("write-tree")
	if err != nil {
		return wtCommit{}, err
	}
	sha, err := run("commit-tree", tree, "-p", "HEAD", "-m", "berth exec --working-tree")
	if err != nil {
		return wtCommit{}, err
	}
	ref := fmt.Sprintf("refs/berth-exec/wt-%d", os.Getpid())
	if _, err := run("update-ref", ref, sha); err != nil {
		return wtCommit{}, err
	}
	return wtCommit{sha: sha, ref: ref, remove: func() { _, _ = run("update-ref", "-d", ref) }}, nil
}

// pipelineRun runs a plan's jobs as a DAG.
type pipelineRun struct {
	app      *app
	plan     *local.Plan
	src      local.Source
	pipeline int64
	manual   bool
	store    string // artifacts of finished jobs
	vars     []string
	parallel int

	mu      sync.Mutex
	outMu   sync.Mutex
	results map[*local.Planned]*execResult
}

// execResult is how a job ended and what it hands on.
type execResult struct {
	result    string // success, failed..., skipped...
	ok        bool   // counts as success for what needs it (an allowed failure does)
	failed    bool   // a failure, allowed or not
	artifacts string // its archive in the store, if any
	dotenv    []local.Var
	took      time.Duration
	order     int
}

// run starts each job when what it waits for has ended, up to parallel
// at once, and prints the summary.
func (r *pipelineRun) run(ctx context.Context, jobs []*local.Planned) error {
	r.results = map[*local.Planned]*execResult{}
	selected := map[*local.Planned]bool{}
	for _, pj := range jobs {
		selected[pj] = true
	}
	pending := append([]*local.Planned(nil), jobs...)
	running := 0
	finished := make(chan *local.Planned)
	order := 0
	for len(pending) > 0 || running > 0 {
		progressed := false
		for i := 0; i < len(pending); i++ {
			pj := pending[i]
			ready, skip := r.ready(pj, selected)
			if !ready {
				continue
			}
			pending = append(pending[:i], pending[i+1:]...)
			i--
			progressed = true
			if skip != "" || ctx.Err() != nil {
				if skip == "" {
					skip = "skipped (cancelled)"
				}
				r.mu.Lock()
				r.results[pj] = &execResult{result: skip, order: order}
				r.mu.Unlock()
				order++
				continue
			}
			if running >= r.parallel {
				pending = append([]*local.Planned{pj}, pending...) // back in front
				i = len(pending)
				progressed = false
				break
			}
			running++
			id := execJobID(r.pipeline, order)
			order++
			go func(pj *local.Planned, id int64, n int) {
				res := r.runJob(ctx, pj, id)
				res.order = n
				r.mu.Lock()
				r.results[pj] = res
				r.mu.Unlock()
				finished <- pj
			}(pj, id, order-1)
		}
		if running == 0 && !progressed && len(pending) > 0 {
			return failure.Systemf("berth exec: jobs wait for each other: %s", pending[0].Job.Name)
		}
		if running > 0 && (!progressed || running >= r.parallel) {
			<-finished
			running--
		}
	}
	return r.summary(jobs)
}

// ready says whether pj can be decided: everything it waits for ended;
// skip says why it does not run, "" when it does.
func (r *pipelineRun) ready(pj *local.Planned, selected map[*local.Planned]bool) (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	anyFailed, allOK := false, true
	for _, n := range pj.Needs {
		if !selected[n] {
			if pj.Job.Needs != nil {
				return true, fmt.Sprintf("skipped (needs %s, which did not run)", n.Job.Name)
			}
			continue // a stage before that did not run: as GitLab, a manual job there does not hold this one
		}
		res, ok := r.results[n]
		if !ok {
			return false, ""
		}
		anyFailed = anyFailed || res.failed && !res.ok
		allOK = allOK && res.ok
	}
	switch pj.When {
	case "always":
		return true, ""
	case "on_failure":
		if anyFailed {
			return true, ""
		}
		return true, "skipped (runs on failure only)"
	}
	if !allOK {
		return true, "skipped (what it waits for failed)"
	}
	return true, ""
}

// runJob runs one job, with retries, and collects what it hands on.
func (r *pipelineRun) runJob(ctx context.Context, pj *local.Planned, id int64) *execResult {
	out := r.jobOutput()
	defer out.flush()
	j := pj.Job
	t := time.Now()
	var res *execResult
	for attempt := 0; attempt <= j.Retry; attempt++ {
		if attempt > 0 {
			fmt.Fprintf(out, "berth exec: retry %d of %d\n", attempt, j.Retry)
		}
		res = r.app.execJob(ctx, r, pj, id, out)
		if res.ok && !res.failed || ctx.Err() != nil {
			break
		}
	}
	res.took = time.Since(t)
	return res
}

// jobOutput is where a job's log goes: straight to stdout when one job
// runs at a time, else kept and printed whole when the job ends, so that
// jobs running side by side do not mix their lines.
func (r *pipelineRun) jobOutput() *jobLog {
	if r.parallel == 1 {
		return &jobLog{out: r.app.stdout}
	}
	return &jobLog{out: r.app.stdout, mu: &r.outMu, held: &strings.Builder{}}
}

// jobLog is one job's log.
type jobLog struct {
	out  io.Writer
	mu   *sync.Mutex
	held *strings.Builder
}

func (l *jobLog) Write(p []byte) (int, error) {
	if l.held == nil {
		return l.out.Write(p)
	}
	return l.held.Write(p)
}

// flush prints a held log.
func (l *jobLog) flush() {
	if l.held == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = io.WriteString(l.out, l.held.String())
}

// summary prints a line per job, in the order they ran, and fails when a
// job failed that may not.
func (r *pipelineRun) summary(jobs []*local.Planned) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	sorted := append([]*local.Planned(nil), jobs...)
	sort.SliceStable(sorted, func(a, b int) bool { return r.results[sorted[a]].order < r.results[sorted[b]].order })
	fmt.Fprintln(r.app.stdout)
	w := tabwriter.NewWriter(r.app.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "JOB\tSTAGE\tRESULT\tDURATION")
	failed := 0
	for _, pj := range sorted {
		res := r.results[pj]
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", pj.Job.Name, pj.Job.Stage, res.result, res.took.Round(100*time.Millisecond))
		if res.failed && !res.ok {
			failed++
		}
	}
	w.Flush()
	if failed > 0 {
		return failure.Buildf("the pipeline failed: %d of %d job(s)", failed, len(jobs))
	}
	return nil
}

// helperBerth is berth's own binary in a job's helper container.
const helperBerth = "/opt/berth/bin/berth"

// execJob runs one job the way gitlab-runner drives berth, in this process:
// config, prepare, then each stage's script through run (artifacts and
// caches restored after the sources, kept after the script), then cleanup.
func (a *app) execJob(ctx context.Context, r *pipelineRun, pj *local.Planned, id int64, out io.Writer) *execResult {
	j := pj.Job
	fmt.Fprintf(out, "\n── job %s · stage %s ──\n", j.Name, j.Stage)
	if j.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, j.Timeout)
		defer cancel()
	}
	tmp, err := os.MkdirTemp("", "berth-exec-")
	if err != nil {
		fmt.Fprintf(out, "berth exec: %v\n", err)
		return &execResult{result: "failed (system)", failed: true}
	}
	defer os.RemoveAll(tmp)
	env := map[string]string{executor.EnvBuildExitCodeFile: filepath.Join(tmp, "exit-code")}
	sub := &app{stdout: out, stderr: out, configPath: a.configPath, getenv: func(k string) string {
		if v, ok := env[k]; ok {
			return v
		}
		return a.getenv(k)
	}}
	write := func(name string, data []byte) string {
		p := filepath.Join(tmp, name)
		_ = os.WriteFile(p, data, 0o600)
		return p
	}
	deps := r.dependencies(pj)
	vars := r.plan.Vars(pj)
	for _, d := range deps {
		vars = append(vars, d.dotenv...)
	}
	for _, kv := range r.vars {
		k, v, _ := strings.Cut(kv, "=")
		vars = append(vars, local.Var{Key: k, Value: v})
	}
	// config first, as the runner does: it says where the job's builds go
	payload := local.Payload(j, vars, r.src, id, r.pipeline, r.manual, "")
	raw, _ := json.Marshal(payload)
	env[executor.EnvJobResponse] = write("job.json", raw)
	var cfg api.ConfigOutput
	cfgOut := &strings.Builder{}
	sub.stdout = cfgOut
	if err := sub.dispatch(ctx, "config", nil); err != nil {
		return sub.execFailed(err, pj)
	}
	sub.stdout = out
	if err := json.Unmarshal([]byte(cfgOut.String()), &cfg); err != nil {
		return sub.execFailed(failure.Systemf("berth config: %v", err), pj)
	}
	projectDir := filepath.Join(cfg.BuildsDir, r.src.Project)
	payload = local.Payload(j, vars, r.src, id, r.pipeline, r.manual, projectDir)
	raw, _ = json.Marshal(payload)
	env[executor.EnvJobResponse] = write("job.json", raw)
	env[executor.EnvProjectDir] = projectDir
	defer func() {
		if err := sub.dispatch(context.WithoutCancel(ctx), "cleanup", nil); err != nil {
			fmt.Fprintf(out, "berth exec: cleanup: %v\n", err)
		}
		_ = os.RemoveAll(cfg.BuildsDir)
	}()
	if err := sub.dispatch(ctx, "prepare", nil); err != nil {
		return sub.execFailed(err, pj)
	}
	stage := func(name, script string) error {
		return sub.dispatch(ctx, "run", []string{write(name, []byte(script)), name})
	}
	handoff := filepath.Join(cfg.BuildsDir, ".berth-exec")
	res := &execResult{result: "success", ok: true}
	var runErr error
	for _, st := range []string{"prepare_script", "get_sources"} {
		if runErr = stage(st, local.Script(st, payload, j, projectDir, "", r.src)); runErr != nil {
			break
		}
	}
	if runErr == nil {
		runErr = r.restore(ctx, stage, j, deps, handoff, projectDir, cfg.CacheDir)
	}
	if runErr == nil {
		runErr = stage("build_script", local.Script("build_script", payload, j, projectDir, "", r.src))
	}
	if runErr != nil {
		res = sub.execFailed(runErr, pj)
	}
	if len(j.AfterScript) > 0 && ctx.Err() == nil {
		status := "success"
		if !res.ok || res.failed {
			status = "failed"
		}
		if err := stage("after_script", local.Script("after_script", payload, j, projectDir, status, r.src)); err != nil {
			fmt.Fprintf(out, "berth exec: after_script failed (the job's result stands): %v\n", err)
		}
	}
	if err := r.keep(ctx, stage, pj, res, handoff, projectDir, cfg.CacheDir); err != nil {
		fmt.Fprintf(out, "berth exec: %v\n", err)
		if res.ok && !res.failed {
			res = &execResult{result: "failed (artifacts)", failed: true}
		}
	}
	return res
}

// dependencies are the finished jobs whose artifacts and dotenv a job
// gets: its dependencies, else its needs with artifacts, else every job of
// the stages before.
func (r *pipelineRun) dependencies(pj *local.Planned) []*execResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*execResult
	for _, n := range pj.Needs {
		res, ok := r.results[n]
		if !ok {
			continue
		}
		switch {
		case pj.Job.HasDeps:
			if !containsStr(pj.Job.Dependencies, n.Job.Name) && !(n.Job.Parallel != nil && containsStr(pj.Job.Dependencies, n.Job.Parallel.Base)) {
				continue
			}
		case pj.Job.Needs != nil:
			if !needsArtifacts(pj.Job, n.Job) {
				continue
			}
		}
		out = append(out, res)
	}
	return out
}

func needsArtifacts(j, of *local.CIJob) bool {
	for _, nd := range j.Needs {
		if nd.Job == of.Name || of.Parallel != nil && nd.Job == of.Parallel.Base {
			return nd.Artifacts
		}
	}
	return false
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// restore puts the caches and the artifacts of deps into the checkout,
// through berth in the helper container.
func (r *pipelineRun) restore(ctx context.Context, stage func(string, string) error, j *local.CIJob, deps []*execResult, handoff, projectDir, cacheDir string) error {
	var script strings.Builder
	script.WriteString("set -eo pipefail\n")
	for _, c := range j.Cache {
		if c.Policy == "push" {
			continue
		}
		keys := append([]string{r.cacheKey(c, projectDir)}, c.FallbackKeys...)
		for _, k := range keys {
			fmt.Fprintf(&script, "if [ -f %[1]s ]; then echo 'Restoring cache %[2]s'; %[3]s archive unpack %[1]s %[4]s; else echo 'No cache %[2]s yet'; fi\n",
				shq(cachePath(cacheDir, k)), k, helperBerth, shq(projectDir))
		}
	}
	if err := os.MkdirAll(handoff, 0o755); err != nil {
		return failure.Systemf("artifacts: %v", err)
	}
	for i, d := range deps {
		if d.artifacts == "" {
			continue
		}
		dst := filepath.Join(handoff, fmt.Sprintf("in-%d.tar", i))
		if err := copyFile(d.artifacts, dst); err != nil {
			return failure.Systemf("artifacts: %v", err)
		}
		fmt.Fprintf(&script, "echo 'Downloading artifacts'\n%s archive unpack %s %s\n", helperBerth, shq(dst), shq(projectDir))
	}
	if script.Len() == len("set -eo pipefail\n") {
		return nil
	}
	return stage("download_artifacts", script.String())
}

// keep packs the job's artifacts and caches in the helper container and
// takes the artifacts into the pipeline's store.
func (r *pipelineRun) keep(ctx context.Context, stage func(string, string) error, pj *local.Planned, res *execResult, handoff, projectDir, cacheDir string) error {
	ctx = context.WithoutCancel(ctx)
	j := pj.Job
	success := res.ok && !res.failed
	whenOK := func(when string) bool {
		return when == "always" || when == "on_success" && success || when == "on_failure" && !success
	}
	var script strings.Builder
	script.WriteString("set -eo pipefail\n")
	for _, c := range j.Cache {
		if c.Policy == "pull" || !whenOK(c.When) {
			continue
		}
		fmt.Fprintf(&script, "mkdir -p %s\necho 'Saving cache %s'\n%s archive pack %s %s%s\n", shq(filepath.Dir(cachePath(cacheDir, r.cacheKey(c, projectDir)))),
			r.cacheKey(c, projectDir), helperBerth, shq(cachePath(cacheDir, r.cacheKey(c, projectDir))), shq(projectDir), packFlags(c.Paths, nil, c.Untracked))
	}
	out := filepath.Join(handoff, "out.tar")
	a := j.Artifacts
	if a != nil && whenOK(a.When) && (len(a.Paths) > 0 || a.Untracked || len(a.Dotenv) > 0) {
		fmt.Fprintf(&script, "echo 'Uploading artifacts'\n%s archive pack %s %s%s\n", helperBerth, shq(out), shq(projectDir),
			packFlags(append(append([]string(nil), a.Paths...), a.Dotenv...), a.Exclude, a.Untracked))
	}
	if script.Len() == len("set -eo pipefail\n") {
		return nil
	}
	if err := os.MkdirAll(handoff, 0o755); err != nil {
		return err
	}
	if err := stage("upload_artifacts_on_success", script.String()); err != nil {
		return fmt.Errorf("artifacts and caches of %s: %v", j.Name, err)
	}
	if a == nil {
		return nil
	}
	// the archive was written in the job's directory: read it without
	// following a link the job could have put there
	f, err := os.OpenFile(out, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("artifacts of %s: %v", j.Name, err)
	}
	defer f.Close()
	kept := filepath.Join(r.store, fmt.Sprintf("%x.tar", sha256.Sum256([]byte(j.Name))))
	if err := copyFrom(f, kept); err != nil {
		return fmt.Errorf("artifacts of %s: %v", j.Name, err)
	}
	res.artifacts = kept
	if len(a.Dotenv) > 0 {
		kf, err := os.Open(kept)
		if err != nil {
			return err
		}
		defer kf.Close()
		if res.dotenv, err = local.Dotenv(kf, a.Dotenv); err != nil {
			return fmt.Errorf("%s: %v", j.Name, err)
		}
	}
	return nil
}

func packFlags(paths, exclude []string, untracked bool) string {
	var b strings.Builder
	for _, p := range paths {
		b.WriteString(" --path " + shq(p))
	}
	for _, p := range exclude {
		b.WriteString(" --exclude " + shq(p))
	}
	if untracked {
		b.WriteString(" --untracked")
	}
	return b.String()
}

// cacheKey is a cache's key, as GitLab makes it: the key, or its prefix
// and a digest of the files it names.
func (r *pipelineRun) cacheKey(c local.Cache, projectDir string) string {
	if len(c.KeyFiles) == 0 {
		return sanitizeKey(c.Key)
	}
	h := sha256.New()
	for _, f := range c.KeyFiles {
		b, _ := exec.Command("git", "-C", r.src.Repo, "show", r.src.Sha+":"+strings.TrimPrefix(f, "/")).Output()
		h.Write(b)
	}
	k := hex.EncodeToString(h.Sum(nil))[:16]
	if c.KeyPrefix != "" {
		k = c.KeyPrefix + "-" + k
	}
	return sanitizeKey(k)
}

func sanitizeKey(k string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == 0 {
			return '_'
		}
		return r
	}, strings.TrimLeft(k, "."))
}

// cachePath is where berth exec keeps a cache of this repository: in the
// project's cache dir, which outlives the run.
func cachePath(cacheDir, key string) string {
	return filepath.Join(cacheDir, "berth-exec", key+".tar")
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func copyFile(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return copyFrom(f, dst)
}

func copyFrom(r io.Reader, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// execFailed prints why a job failed and says how, for the summary: an
// allowed failure (allow_failure, its exit codes) counts as passed.
func (a *app) execFailed(err error, pj *local.Planned) *execResult {
	fmt.Fprintf(a.stdout, "ERROR: Job failed: %s\n", a.redact(err.Error()))
	res := &execResult{result: "failed", failed: true}
	var se *executor.ScriptExit
	switch {
	case errors.As(err, &se):
		res.result = fmt.Sprintf("failed (exit code %d)", se.Code)
		if pj.AllowFailure.Allowed(se.Code) {
			res.result, res.ok = fmt.Sprintf("failed, allowed (exit code %d)", se.Code), true
		}
	case failure.ClassOf(err) == failure.SystemFailure:
		res.result = "failed (system)"
	case pj.AllowFailure.Allowed(-1) && len(pj.AllowFailure.Codes()) == 0:
		res.result, res.ok = "failed, allowed", true
	}
	return res
}
