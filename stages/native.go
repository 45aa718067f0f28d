package stages

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/settings"
)

// Native performs a deploy or release stage in place of the job's script.
type Native struct {
	Plan       Plan
	Settings   *settings.Settings
	Job        *executor.Job
	ProjectDir string // the checked-out sources
	Images     *Images
	Registry   *Registry
	// Driver opens an environment's driver.
	Driver func(env string) (Driver, error)
	Out    io.Writer
}

// Run does what the plan says and ends with one summary line.
func (n *Native) Run(ctx context.Context) error {
	start := time.Now()
	p := n.Plan
	fmt.Fprintf(n.Out, "berth: stage %s is native (%s): the job's script lines are not run\n", n.Job.Stage, p.Action)
	if p.Flow == nil {
		fmt.Fprintf(n.Out, "berth: no flow in berth.toml matches %s %s: nothing to %s\n", n.Job.RefType, n.Job.Ref, p.Action)
		return nil
	}
	if action := n.variable("BERTH_ACTION"); action == "rollback" {
		return n.rollback(ctx, start)
	}
	repo, err := n.repository()
	if err != nil {
		return err
	}
	tagRef := repo + ":" + p.ImageTag
	deploying := p.Action == settings.ActionDeploy && p.Env != ""
	if deploying {
		if err := n.gates(p.Env); err != nil {
			return err
		}
	}

	var digest string
	switch {
	case p.Action == settings.ActionRelease:
		digest, err = n.release(ctx, repo, tagRef)
	case n.Job.RefType == api.RefTypeTag:
		// a tag is deployed as released: promoted, never rebuilt
		var ok bool
		digest, ok, err = n.Registry.Digest(ctx, tagRef)
		if err == nil && !ok {
			err = executor.Buildf("%s is not in the registry: run the release job of %s first", tagRef, n.Job.Ref)
		}
	default:
		digest, err = n.buildAndPush(ctx, tagRef)
	}
	if err != nil {
		return err
	}
	pinned := repo + "@" + digest
	if !deploying {
		fmt.Fprintf(n.Out, "berth: done in %s: %s is %s\n", since(start), tagRef, digest)
		return nil
	}
	rel := Release{Env: p.Env, Image: pinned, Digest: digest, Tag: p.ImageTag, Ref: n.Job.Ref, Sha: n.Job.Sha,
		Pipeline: n.Job.Pipeline, Job: n.Job.ID, By: n.by()}
	if err := n.deploy(ctx, rel); err != nil {
		return err
	}
	fmt.Fprintf(n.Out, "berth: done in %s: %s runs %s (%s)\n", since(start), p.Env, pinned, p.ImageTag)
	return nil
}

func since(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }

// gates refuse a deploy that the environment does not allow.
func (n *Native) gates(env string) error {
	e := n.Settings.Environments[env]
	if e.Manual && n.variable("CI_JOB_MANUAL") != "true" {
		return executor.Buildf("environment %s deploys only from a manual job (CI_JOB_MANUAL=true): add `when: manual` to the job and start it by hand", env)
	}
	if e.Protected && n.variable("CI_COMMIT_REF_PROTECTED") != "true" {
		return executor.Buildf("environment %s deploys only from protected refs, and %s is not protected in GitLab", env, n.Job.Ref)
	}
	return nil
}

func (n *Native) variable(key string) string {
	v, _ := n.Job.Var(key)
	return v
}

// by names who started the job, for labels and history.
func (n *Native) by() string {
	if u := n.variable("GITLAB_USER_LOGIN"); u != "" {
		return u
	}
	return fmt.Sprintf("job %d", n.Job.ID)
}

// repository is where images go: the TOML's, else CI_REGISTRY_IMAGE.
func (n *Native) repository() (string, error) {
	repo := n.Settings.Registry.Image
	source := "[registry] image in berth.toml"
	if repo == "" {
		repo, source = n.variable("CI_REGISTRY_IMAGE"), "CI_REGISTRY_IMAGE"
	}
	if repo == "" {
		return "", executor.Systemf("no image repository: set [registry] image in berth.toml, or enable the GitLab container registry (CI_REGISTRY_IMAGE)")
	}
	named, err := reference.ParseNormalizedNamed(repo)
	if err != nil || !reference.IsNameOnly(named) {
		return "", executor.Systemf("%s %q is not a repository name without tag", source, repo)
	}
	return repo, nil
}

// buildOptions are the TOML's, changed by job variables only where
// [build] job_overrides allows.
func (n *Native) buildOptions(tagRef string) (BuildOptions, error) {
	b := n.Settings.Build
	allowed := map[string]bool{}
	for _, o := range b.JobOverrides {
		allowed[o] = true
	}
	args := map[string]string{}
	for k, v := range b.Args {
		args[k] = v
	}
	ctxDir, dockerfile := b.Context, b.Dockerfile
	for _, v := range n.Job.Variables {
		var field string
		switch {
		case v.Key == "BERTH_DOCKERFILE":
			field = "dockerfile"
		case v.Key == "BERTH_CONTEXT":
			field = "context"
		case strings.HasPrefix(v.Key, "BERTH_BUILD_ARG_"):
			field = "args." + strings.TrimPrefix(v.Key, "BERTH_BUILD_ARG_")
		default:
			continue
		}
		if !allowed[field] {
			return BuildOptions{}, executor.Buildf("the job sets %s, but berth.toml does not let jobs change %s ([build] job_overrides): remove the variable or ask the runner's operator", v.Key, field)
		}
		switch field {
		case "dockerfile":
			dockerfile = v.Value
		case "context":
			ctxDir = v.Value
		default:
			args[strings.TrimPrefix(field, "args.")] = v.Value
		}
	}
	if err := checkInside(n.ProjectDir, ctxDir); err != nil {
		return BuildOptions{}, err
	}
	return BuildOptions{
		Dir: filepath.Join(n.ProjectDir, ctxDir), Dockerfile: dockerfile, Args: args, Tags: []string{tagRef},
		Labels: map[string]string{
			LabelRevision: n.Job.Sha, LabelVersion: n.Job.Ref, LabelSource: n.variable("CI_PROJECT_URL"),
			LabelCreated: time.Now().UTC().Format(time.RFC3339),
		},
	}, nil
}

func (n *Native) buildAndPush(ctx context.Context, tagRef string) (string, error) {
	opts, err := n.buildOptions(tagRef)
	if err != nil {
		return "", err
	}
	t := time.Now()
	fmt.Fprintf(n.Out, "berth: build %s from %s\n", tagRef, opts.Dir)
	if _, err := n.Images.Build(ctx, opts); err != nil {
		return "", err
	}
	fmt.Fprintf(n.Out, "berth: built in %s\n", since(t))
	t = time.Now()
	digest, err := n.Images.Push(ctx, tagRef)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(n.Out, "berth: pushed %s@%s (%s)\n", tagRef, digest, since(t))
	return digest, nil
}

// release promotes the image already built from this commit, or builds one
// when there is none, and says which.
func (n *Native) release(ctx context.Context, repo, tagRef string) (string, error) {
	for _, cand := range Candidates(n.Plan.Flow, n.Job.Ref) {
		ref := repo + ":" + cand
		rev, digest, ok, err := n.Registry.Revision(ctx, ref)
		if err != nil {
			return "", executor.Buildf("read %s: %v", ref, err)
		}
		switch {
		case !ok:
			fmt.Fprintf(n.Out, "berth: candidate %s: not in the registry\n", ref)
		case rev != n.Job.Sha:
			fmt.Fprintf(n.Out, "berth: candidate %s: built from %s, not %s\n", ref, short(rev), short(n.Job.Sha))
		default:
			got, err := n.Registry.Tag(ctx, ref, tagRef)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(n.Out, "berth: promoted %s to %s, same digest %s, no rebuild\n", ref, tagRef, got)
			if got != digest {
				return "", executor.Systemf("promotion of %s changed the digest (%s, expected %s)", ref, got, digest)
			}
			return got, nil
		}
	}
	fmt.Fprintf(n.Out, "berth: no image of commit %s among the candidates: building %s\n", short(n.Job.Sha), tagRef)
	return n.buildAndPush(ctx, tagRef)
}

func short(sha string) string {
	if len(sha) > 8 {
		return sha[:8]
	}
	if sha == "" {
		return "(no revision label)"
	}
	return sha
}

// deploy takes the environment's lock and deploys through its driver.
func (n *Native) deploy(ctx context.Context, rel Release) error {
	d, err := n.Driver(rel.Env)
	if err != nil {
		return err
	}
	env := n.Settings.Environments[rel.Env]
	unlock, err := d.Lock(ctx, Holder{Job: n.Job.ID, Pipeline: n.Job.Pipeline, By: rel.By, Image: rel.Image,
		Deadline: time.Now().Add(n.Job.Timeout)}, env.LockTimeout.D())
	if err != nil {
		return err
	}
	defer unlock()
	fmt.Fprintf(n.Out, "berth: deploy %s to %s (%s)\n", rel.Image, rel.Env, env.Driver)
	return d.Deploy(ctx, rel)
}

// rollback is `berth rollback` as a job: BERTH_ACTION=rollback, with
// BERTH_ROLLBACK_TO naming a tag or digest.
func (n *Native) rollback(ctx context.Context, start time.Time) error {
	env := n.Plan.Env
	if env == "" {
		return executor.Buildf("the flow of %s deploys no environment: nothing to roll back", n.Job.Ref)
	}
	if err := n.gates(env); err != nil {
		return err
	}
	rec, err := Rollback(ctx, n.Driver, n.Settings, env, n.variable("BERTH_ROLLBACK_TO"), n.by(), n.Job.ID, n.Job.Pipeline, n.Job.Timeout, n.Out)
	if err != nil {
		return err
	}
	fmt.Fprintf(n.Out, "berth: done in %s: %s runs %s again (%s, %s)\n", since(start), env, rec.Tag, short(strings.TrimPrefix(rec.Digest, "sha256:")), rec.ID)
	return nil
}

// Rollback takes the lock and rolls an environment back; shared by the job
// and the operator command.
func Rollback(ctx context.Context, open func(string) (Driver, error), s *settings.Settings, env, to, by string, job, pipeline int64, timeout time.Duration, out io.Writer) (Record, error) {
	e, ok := s.Environments[env]
	if !ok {
		return Record{}, executor.Buildf("no environment %q in berth.toml", env)
	}
	d, err := open(env)
	if err != nil {
		return Record{}, err
	}
	unlock, err := d.Lock(ctx, Holder{Job: job, Pipeline: pipeline, By: by, Image: lockImage(ctx, d), Deadline: time.Now().Add(timeout)}, e.LockTimeout.D())
	if err != nil {
		return Record{}, err
	}
	defer unlock()
	return d.Rollback(ctx, to, by)
}

// LockImager is a driver whose lock is a container on an engine: it names
// an image present there to make the lock of.
type LockImager interface {
	LockImage(ctx context.Context) string
}

// lockImage is an image present at the target for a rollback's lock, where
// the driver needs one.
func lockImage(ctx context.Context, d Driver) string {
	if li, ok := d.(LockImager); ok {
		return li.LockImage(ctx)
	}
	return ""
}
