package stages

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berthci/berth/stages/driver"

	"github.com/distribution/reference"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/joblog"
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
	// Envs deploys and rolls back berth.toml's environments.
	Envs *Environments
	Out  io.Writer
}

// Run does what the plan says and ends with one summary line.
func (n *Native) Run(ctx context.Context) error {
	start := time.Now()
	p := n.Plan
	joblog.Step(n.Out, "stage %s is native (%s): the job's script lines are not run", n.Job.Stage, p.Action)
	rollback, err := n.wantsRollback()
	if err != nil {
		return err
	}
	if p.Flow == nil {
		joblog.Step(n.Out, "no flow in berth.toml matches %s %s: nothing to %s", n.Job.RefType, n.Job.Ref, p.Action)
		return nil
	}
	if rollback {
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
		digest, err = n.released(ctx, tagRef)
	default:
		digest, err = n.buildAndPush(ctx, tagRef)
	}
	if err != nil {
		return err
	}
	pinned := repo + "@" + digest
	if !deploying {
		joblog.Step(n.Out, "done in %s: %s is %s", since(start), tagRef, digest)
		return nil
	}
	rel := driver.Release{Env: p.Env, Image: pinned, Digest: digest, Tag: p.ImageTag, Ref: n.Job.Ref, Sha: n.Job.Sha,
		Pipeline: n.Job.Pipeline, Job: n.Job.ID, By: n.by(), Project: n.Job.Project, Flow: p.Flow.Name}
	if err := n.Envs.Deploy(ctx, rel, DeployOptions{Timeout: n.Job.Timeout}); err != nil {
		return err
	}
	joblog.Step(n.Out, "done in %s: %s runs %s (%s)", since(start), p.Env, pinned, p.ImageTag)
	return nil
}

// wantsRollback reads BERTH_ACTION: "rollback" in a deploy stage, nothing
// else anywhere.
func (n *Native) wantsRollback() (bool, error) {
	switch action := n.variable(executor.VarAction); {
	case action == "":
		return false, nil
	case action != "rollback":
		return false, failure.Buildf("BERTH_ACTION=%q is not an action berth knows: the only one is rollback, in a deploy stage; remove the variable", action)
	case n.Plan.Action != settings.ActionDeploy:
		return false, failure.Buildf("BERTH_ACTION=rollback works in deploy stages only, and stage %s is a %s stage: set it on a job of a deploy stage", n.Job.Stage, n.Plan.Action)
	}
	return true, nil
}

// released is the digest a tag's release job made, checked to be an image
// of the tag's commit: a tag pushed to the registry again afterwards is
// not deployed. The tag is resolved once; the digest is used from then on.
func (n *Native) released(ctx context.Context, tagRef string) (string, error) {
	rev, digest, ok, err := n.Registry.Revision(ctx, tagRef)
	switch {
	case err != nil:
		return "", failure.Systemf("read %s from the registry: %v", tagRef, err)
	case !ok:
		return "", failure.Buildf("%s is not in the registry: run the release job of %s first", tagRef, n.Job.Ref)
	case rev != n.Job.Sha:
		return "", failure.Buildf("%s (%s) was built from %s, not from %s, the commit of tag %s: the tag was pushed to the registry again after its release job; run the release job of %s again, and find out who pushed it",
			tagRef, digest, short(rev), short(n.Job.Sha), n.Job.Ref, n.Job.Ref)
	}
	joblog.Step(n.Out, "%s is %s, built from %s", tagRef, digest, short(rev))
	return digest, nil
}

func since(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }

// gates refuse a deploy that the environment does not allow. protected
// reads the payload's git_info.protected, which a job cannot change; manual
// reads CI_JOB_MANUAL, which a job can set itself (executor.VarJobManual).
func (n *Native) gates(env string) error {
	e := n.Settings.Environments[env]
	if e.Protected && !n.Job.Protected {
		if !n.Job.ProtectedKnown {
			return failure.Buildf("environment %s deploys only from protected refs, and GitLab did not say whether %s is (git_info.protected, sent by GitLab 18.3 and later): upgrade GitLab", env, n.Job.Ref)
		}
		return failure.Buildf("environment %s deploys only from protected refs, and %s is not protected in GitLab", env, n.Job.Ref)
	}
	if e.Manual && n.variable(executor.VarJobManual) != "true" {
		return failure.Buildf("environment %s deploys only from a manual job (CI_JOB_MANUAL=true): add `when: manual` to the job and start it by hand", env)
	}
	return nil
}

func (n *Native) variable(key executor.JobVar) string {
	v, _ := n.Job.Var(key)
	return v
}

// by names who started the job, for labels and history.
func (n *Native) by() string {
	if u := n.variable(executor.VarUserLogin); u != "" {
		return u
	}
	return fmt.Sprintf("job %d", n.Job.ID)
}

// repository is where images go: [registry] image in berth.toml, else the
// GitLab registry whose login GitLab sent with the job, at the project's
// path. Both come from the operator or GitLab, never from a variable the
// job can set (CI_REGISTRY_IMAGE, CI_REGISTRY).
func (n *Native) repository() (string, error) {
	project := strings.ToLower(n.Job.Project)
	repo, source := n.Settings.Registry.Image, "[registry] image in berth.toml"
	if repo != "" {
		repo = strings.ReplaceAll(repo, "{project}", project)
	} else if host, _, _ := n.Job.RegistryLogin(); host != "" && project != "" {
		repo, source = host+"/"+project, "the GitLab registry of the job's payload"
	} else {
		return "", failure.Systemf("no image repository: set [registry] image in berth.toml (\"{project}\" stands for the project's path), or enable GitLab's container registry for the project, whose login GitLab sends with each job")
	}
	named, err := reference.ParseNormalizedNamed(repo)
	if err != nil || !reference.IsNameOnly(named) {
		return "", failure.Systemf("%s %q is not a repository name without tag", source, repo)
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
		switch key := executor.JobVar(v.Key); {
		case key == executor.VarDockerfile:
			field = "dockerfile"
		case key == executor.VarContext:
			field = "context"
		case strings.HasPrefix(v.Key, string(executor.VarBuildArgPrefix)):
			field = "args." + strings.TrimPrefix(v.Key, string(executor.VarBuildArgPrefix))
		default:
			continue
		}
		if !allowed[field] {
			return BuildOptions{}, failure.Buildf("the job sets %s, but berth.toml does not let jobs change %s ([build] job_overrides): remove the variable or ask the runner's operator", v.Key, field)
		}
		if v.Masked {
			return BuildOptions{}, failure.Buildf("%s is a masked variable, and a build arg stays readable in the image's history: keep secrets out of build args", v.Key)
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
	dir, err := insideDir(n.ProjectDir, ctxDir, "the build context")
	if err != nil {
		return BuildOptions{}, err
	}
	if _, err := insideDir(dir, dockerfile, "the Dockerfile"); err != nil {
		return BuildOptions{}, err
	}
	return BuildOptions{
		Dir: dir, Dockerfile: dockerfile, Args: args, Tags: []string{tagRef},
		Labels: map[string]string{
			LabelRevision: n.Job.Sha, LabelVersion: n.Job.Ref, LabelSource: n.variable(executor.VarProjectURL),
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
	joblog.Step(n.Out, "build %s from %s", tagRef, opts.Dir)
	if _, err := n.Images.Build(ctx, opts); err != nil {
		return "", err
	}
	joblog.Step(n.Out, "built in %s", since(t))
	t = time.Now()
	digest, err := n.Images.Push(ctx, tagRef)
	if err != nil {
		return "", err
	}
	joblog.Step(n.Out, "pushed %s@%s (%s)", tagRef, digest, since(t))
	return digest, nil
}

// release promotes the image already built from this commit, or builds one
// when there is none, and says which.
func (n *Native) release(ctx context.Context, repo, tagRef string) (string, error) {
	for _, cand := range Candidates(n.Plan.Flow, n.Job.Ref) {
		ref := repo + ":" + cand
		rev, digest, ok, err := n.Registry.Revision(ctx, ref)
		if err != nil {
			return "", registryFault(err, "read %s from the registry: %v", ref, err)
		}
		switch {
		case !ok:
			joblog.Step(n.Out, "candidate %s: not in the registry", ref)
		case rev != n.Job.Sha:
			joblog.Step(n.Out, "candidate %s: built from %s, not %s", ref, short(rev), short(n.Job.Sha))
		default:
			// by the digest just read: a tag pushed again meanwhile is not copied
			got, err := n.Registry.Tag(ctx, repo+"@"+digest, tagRef)
			if err != nil {
				return "", err
			}
			joblog.Step(n.Out, "promoted %s to %s, same digest %s, no rebuild", ref, tagRef, got)
			if got != digest {
				return "", failure.Systemf("promotion of %s changed the digest (%s, expected %s)", ref, got, digest)
			}
			return got, nil
		}
	}
	joblog.Step(n.Out, "no image of commit %s among the candidates: building %s", short(n.Job.Sha), tagRef)
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

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// rollback is `berth rollback` as a job: BERTH_ACTION=rollback, with
// BERTH_ROLLBACK_TO naming a tag or digest.
func (n *Native) rollback(ctx context.Context, start time.Time) error {
	env := n.Plan.Env
	if env == "" {
		return failure.Buildf("the flow of %s deploys no environment: nothing to roll back", n.Job.Ref)
	}
	if err := n.gates(env); err != nil {
		return err
	}
	rec, err := n.Envs.Rollback(ctx, RollbackOptions{Env: env, To: n.variable(executor.VarRollbackTo), By: n.by(),
		Project: n.Job.Project, Job: n.Job.ID, Pipeline: n.Job.Pipeline, Timeout: n.Job.Timeout})
	if err != nil {
		return err
	}
	joblog.Step(n.Out, "done in %s: %s runs %s again (%s, %s)", since(start), env, rec.Tag, short(strings.TrimPrefix(rec.Digest, "sha256:")), rec.ID)
	return nil
}
