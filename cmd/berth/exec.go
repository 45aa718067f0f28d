package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/local"
)

// execResult is one line of berth exec's summary.
type execResult struct {
	job, stage, result string
	took               time.Duration
}

// exec runs jobs of the current repository's .gitlab-ci.yml through the
// same protocol calls the runner makes (config, prepare, run per stage,
// cleanup), in stage order: gitlab-runner exec, for berth.
func (a *app) exec(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	branch := fs.String("ref", "", "the branch to run for (default: the checked-out one)")
	tag := fs.String("tag", "", "the tag to run for")
	manual := fs.Bool("manual", false, "run manual jobs too, as if started by hand")
	file := fs.String("file", ".gitlab-ci.yml", "the pipeline file, relative to the repository")
	if err := fs.Parse(args); err != nil {
		return failure.Buildf("usage: berth exec [--ref BRANCH | --tag TAG] [--manual] [JOB...]")
	}
	if *branch != "" && *tag != "" {
		return failure.Buildf("berth exec: give --ref or --tag, not both")
	}
	if err := a.loadSettings(); err != nil {
		return err
	}
	src, err := localSource(*branch, *tag)
	if err != nil {
		return err
	}
	p, err := local.Load(filepath.Join(src.Repo, *file))
	if err != nil {
		return failure.Buildf("%v", err)
	}
	jobs, err := pick(p, src.Ref, *manual, fs.Args())
	if err != nil {
		return err
	}
	if len(jobs) == 0 {
		return failure.Buildf("no job of %s runs for %s", *file, refText(src.Ref))
	}
	// pipelines number up in time, as GitLab's do: a deploy checks that no
	// newer pipeline of its flow deployed already
	pipeline := time.Now().UnixMilli()
	fmt.Fprintf(a.stdout, "berth exec: %d job(s) for %s at %.8s, pipeline %d\n", len(jobs), refText(src.Ref), src.Sha, pipeline)
	var results []execResult
	failed, failedStage := 0, ""
	for i, j := range jobs {
		// as in GitLab: the jobs of a failed job's stage still run, later
		// stages do not (unless when: always)
		if failed > 0 && j.Stage != failedStage && j.When != "always" {
			results = append(results, execResult{j.Name, j.Stage, "skipped (an earlier stage failed)", 0})
			continue
		}
		t := time.Now()
		res := a.execJob(ctx, j, src, execJobID(pipeline, i), pipeline, *manual)
		results = append(results, execResult{j.Name, j.Stage, res, time.Since(t)})
		if res != "success" {
			failed++
			if failedStage == "" {
				failedStage = j.Stage
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Fprintln(a.stdout)
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "JOB\tSTAGE\tRESULT\tDURATION")
	for _, r := range results {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.job, r.stage, r.result, r.took.Round(100*time.Millisecond))
	}
	w.Flush()
	if failed > 0 {
		return failure.Buildf("the pipeline failed: %d of %d job(s)", failed, len(jobs))
	}
	return nil
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
// commit of the ref.
func localSource(branch, tag string) (local.Source, error) {
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", args...).Output()
		return strings.TrimSpace(string(out)), err
	}
	root, err := git("rev-parse", "--show-toplevel")
	if err != nil {
		return local.Source{}, failure.Buildf("berth exec runs in a git repository: %v", err)
	}
	ref := local.Ref{Name: branch}
	switch {
	case tag != "":
		ref = local.Ref{Name: tag, IsTag: true}
	case branch == "":
		if ref.Name, err = git("-C", root, "symbolic-ref", "--short", "HEAD"); err != nil {
			return local.Source{}, failure.Buildf("HEAD is not on a branch: give --ref BRANCH or --tag TAG")
		}
	}
	full := "refs/heads/" + ref.Name
	if ref.IsTag {
		full = "refs/tags/" + ref.Name
	}
	sha, err := git("-C", root, "rev-parse", "--verify", "-q", full+"^{commit}")
	if err != nil {
		return local.Source{}, failure.Buildf("no %s in %s", refText(ref), root)
	}
	user := os.Getenv("USER")
	if user == "" {
		user = "berth-exec"
	}
	return local.Source{Repo: root, Project: "local/" + filepath.Base(root), Ref: ref, Sha: sha, User: user}, nil
}

// pick is the named jobs, or every job that applies to the ref; manual
// ones only with --manual.
func pick(p *local.Pipeline, ref local.Ref, manual bool, names []string) ([]*local.CIJob, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []*local.CIJob
	for _, j := range p.Jobs {
		if len(names) > 0 && !want[j.Name] {
			continue
		}
		delete(want, j.Name)
		how := j.Applies(ref)
		switch {
		case how == "" && len(names) > 0:
			return nil, failure.Buildf("job %s does not run for %s (see its only, except or rules)", j.Name, refText(ref))
		case how == "":
		case how == "manual" && !manual:
			if len(names) > 0 {
				return nil, failure.Buildf("job %s is manual: add --manual to run it as if started by hand", j.Name)
			}
		default:
			out = append(out, j)
		}
	}
	for n := range want {
		return nil, failure.Buildf("no job %q in the pipeline file", n)
	}
	return out, nil
}

// execJob runs one job the way gitlab-runner drives berth, in this process:
// config, prepare, then each stage's script through run, then cleanup.
func (a *app) execJob(ctx context.Context, j *local.CIJob, src local.Source, id, pipeline int64, manual bool) string {
	fmt.Fprintf(a.stdout, "\n── job %s · stage %s ──\n", j.Name, j.Stage)
	tmp, err := os.MkdirTemp("", "berth-exec-")
	if err != nil {
		fmt.Fprintf(a.stdout, "berth exec: %v\n", err)
		return "failed (system)"
	}
	defer os.RemoveAll(tmp)
	env := map[string]string{executor.EnvBuildExitCodeFile: filepath.Join(tmp, "exit-code")}
	sub := &app{stdout: a.stdout, stderr: a.stderr, configPath: a.configPath, getenv: func(k string) string {
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
	// config first, as the runner does: it says where the job's builds go
	payload := local.Payload(j, src, id, pipeline, manual, "")
	raw, _ := json.Marshal(payload)
	env[executor.EnvJobResponse] = write("job.json", raw)
	var cfg api.ConfigOutput
	cfgOut := &strings.Builder{}
	sub.stdout = cfgOut
	if err := sub.dispatch(ctx, "config", nil); err != nil {
		return sub.execFailed(err)
	}
	sub.stdout = a.stdout
	if err := json.Unmarshal([]byte(cfgOut.String()), &cfg); err != nil {
		return sub.execFailed(failure.Systemf("berth config: %v", err))
	}
	projectDir := filepath.Join(cfg.BuildsDir, src.Project)
	payload = local.Payload(j, src, id, pipeline, manual, projectDir)
	raw, _ = json.Marshal(payload)
	env[executor.EnvJobResponse] = write("job.json", raw)
	env[executor.EnvProjectDir] = projectDir
	defer func() {
		if err := sub.dispatch(context.WithoutCancel(ctx), "cleanup", nil); err != nil {
			fmt.Fprintf(a.stdout, "berth exec: cleanup: %v\n", err)
		}
		_ = os.RemoveAll(cfg.BuildsDir)
	}()

	if err := sub.dispatch(ctx, "prepare", nil); err != nil {
		return sub.execFailed(err)
	}
	result := "success"
	for _, stage := range []string{"prepare_script", "get_sources", "build_script"} {
		script := write(stage, []byte(local.Script(stage, payload, j, projectDir, "")))
		if err := sub.dispatch(ctx, "run", []string{script, stage}); err != nil {
			result = sub.execFailed(err)
			break
		}
	}
	if len(j.AfterScript) > 0 {
		status := "success"
		if result != "success" {
			status = "failed"
		}
		script := write("after_script", []byte(local.Script("after_script", payload, j, projectDir, status)))
		if err := sub.dispatch(ctx, "run", []string{script, "after_script"}); err != nil {
			fmt.Fprintf(a.stdout, "berth exec: after_script failed (the job's result stands): %v\n", err)
		}
	}
	return result
}

// execFailed prints why a job failed and says how, for the summary.
func (a *app) execFailed(err error) string {
	fmt.Fprintf(a.stdout, "ERROR: Job failed: %s\n", a.redact(err.Error()))
	var se *executor.ScriptExit
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("failed (exit code %d)", se.Code)
	case failure.ClassOf(err) == failure.SystemFailure:
		return "failed (system)"
	default:
		return "failed"
	}
}
