package local

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/berthci/berth/executor/api"
)

// Source is the repository a local pipeline runs: where, which commit.
type Source struct {
	Repo    string // the repository's directory
	Project string // a project path, for CI_PROJECT_PATH and labels
	Ref     Ref
	Sha     string
	User    string // GITLAB_USER_LOGIN: who runs berth exec
}

// Payload is what GitLab would send a runner for the job: the trusted job
// context berth reads from JOB_RESPONSE_FILE.
func Payload(j *CIJob, src Source, id, pipeline int64, manual bool, projectDir string) *api.JobResponse {
	refType := api.RefTypeBranch
	if src.Ref.IsTag {
		refType = api.RefTypeTag
	}
	// as GitLab's defaults protect them
	protected := src.Ref.IsTag || src.Ref.Name == "main" || src.Ref.Name == "master"
	r := &api.JobResponse{
		ID:         id,
		Token:      "berth-exec-" + strconv.FormatInt(id, 10), // no GitLab behind it; redacted all the same
		JobInfo:    api.JobInfo{ID: id, Name: j.Name, Stage: j.Stage, ProjectFullPath: src.Project, ProjectName: lastPart(src.Project), PipelineID: pipeline},
		GitInfo:    api.GitInfo{RepoURL: "file://" + src.Repo, Ref: src.Ref.Name, Sha: src.Sha, RefType: refType, Protected: &protected},
		RunnerInfo: api.RunnerInfo{Timeout: 3600},
		Image:      api.Image{Name: j.Image},
	}
	for _, s := range j.Services {
		r.Services = append(r.Services, api.Image{Name: s.Image, Alias: s.Alias})
	}
	for _, kv := range predefined(j, src, id, pipeline, manual, projectDir) {
		r.Variables = append(r.Variables, api.Variable{Key: kv.Key, Value: kv.Value, Public: true})
	}
	for _, v := range j.Variables {
		r.Variables = append(r.Variables, api.Variable{Key: v.Key, Value: v.Value})
	}
	r.Steps = []api.Step{{Name: "script", Script: j.Script}}
	if len(j.AfterScript) > 0 {
		r.Steps = append(r.Steps, api.Step{Name: "after_script", Script: j.AfterScript})
	}
	return r
}

func lastPart(p string) string { return p[strings.LastIndex(p, "/")+1:] }

var slugRe = regexp.MustCompile(`[^a-z0-9]+`)

// predefined are the CI_* variables GitLab sets that jobs commonly read.
func predefined(j *CIJob, src Source, id, pipeline int64, manual bool, projectDir string) []Var {
	slug := strings.Trim(slugRe.ReplaceAllString(strings.ToLower(src.Ref.Name), "-"), "-")
	if len(slug) > 63 {
		slug = slug[:63]
	}
	protected := src.Ref.IsTag || src.Ref.Name == "main" || src.Ref.Name == "master"
	vs := []Var{
		{"CI", "true"}, {"BERTH_EXEC", "true"},
		{"CI_JOB_ID", strconv.FormatInt(id, 10)}, {"CI_JOB_NAME", j.Name}, {"CI_JOB_STAGE", j.Stage},
		{"CI_PIPELINE_ID", strconv.FormatInt(pipeline, 10)}, {"CI_PROJECT_DIR", projectDir},
		{"CI_PROJECT_PATH", src.Project}, {"CI_PROJECT_NAME", lastPart(src.Project)},
		{"CI_COMMIT_SHA", src.Sha}, {"CI_COMMIT_SHORT_SHA", src.Sha[:min(8, len(src.Sha))]},
		{"CI_COMMIT_REF_NAME", src.Ref.Name}, {"CI_COMMIT_REF_SLUG", slug},
		{"CI_COMMIT_REF_PROTECTED", strconv.FormatBool(protected)},
	}
	if src.Ref.IsTag {
		vs = append(vs, Var{"CI_COMMIT_TAG", src.Ref.Name})
	} else {
		vs = append(vs, Var{"CI_COMMIT_BRANCH", src.Ref.Name})
	}
	if manual {
		vs = append(vs, Var{"CI_JOB_MANUAL", "true"})
	}
	if src.User != "" {
		vs = append(vs, Var{"GITLAB_USER_LOGIN", src.User})
	}
	return vs
}

// Script is the runner stage's script, as gitlab-runner would hand it to
// berth: bash on the host for prepare_script and get_sources, the job's
// shell in its container for build_script and after_script.
func Script(stage string, p *api.JobResponse, j *CIJob, projectDir, status string) string {
	var b strings.Builder
	b.WriteString("set -eo pipefail\n")
	switch stage {
	case "prepare_script":
		b.WriteString("echo \"Running on $(hostname) via berth exec...\"\n")
	case "get_sources":
		fmt.Fprintf(&b, "rm -rf %[1]s\nmkdir -p %[1]s\n", quote(projectDir))
		fmt.Fprintf(&b, "echo %s\n", quote(fmt.Sprintf("Checking out %s as %s...", p.GitInfo.Sha[:min(8, len(p.GitInfo.Sha))], p.GitInfo.Ref)))
		// the helper runs as root; the repository is the user's, mounted read-only
		fmt.Fprintf(&b, "git -c safe.directory='*' clone -q --no-checkout %s %s\n", quote(p.GitInfo.RepoURL), quote(projectDir))
		fmt.Fprintf(&b, "git -c safe.directory='*' -c advice.detachedHead=false -C %s checkout -q %s\n", quote(projectDir), quote(p.GitInfo.Sha))
	case "build_script", "after_script":
		for _, v := range p.Variables {
			fmt.Fprintf(&b, "export %s=%s\n", v.Key, quote(v.Value))
		}
		lines := append(append([]string{}, j.BeforeScript...), j.Script...)
		if stage == "after_script" {
			fmt.Fprintf(&b, "export CI_JOB_STATUS=%s\n", status)
			lines = j.AfterScript
		}
		fmt.Fprintf(&b, "cd %s\n", quote(projectDir))
		for _, l := range lines {
			fmt.Fprintf(&b, "echo %s\n%s\n", quote("$ "+l), l)
		}
	}
	return b.String()
}

// quote makes s one word for sh.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
