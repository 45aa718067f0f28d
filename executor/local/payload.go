package local

import (
	"fmt"
	"regexp"
	"sort"
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
	// DefaultBranch is CI_DEFAULT_BRANCH: main or master, whichever the
	// repository has.
	DefaultBranch string
	// Message is the commit's message; Changed the files it changed
	// against its parent (nil: no parent).
	Message string
	Changed []string
	// FetchRef, when set, is a ref get_sources fetches for Sha: a commit
	// of the working tree that no branch holds.
	FetchRef string
}

// Payload is what GitLab would send a runner for the job: the trusted job
// context berth reads from JOB_RESPONSE_FILE.
func Payload(j *CIJob, vars []Var, src Source, id, pipeline int64, manual bool, projectDir string) *api.JobResponse {
	refType := api.RefTypeBranch
	if src.Ref.IsTag {
		refType = api.RefTypeTag
	}
	// as GitLab's defaults protect them
	protected := src.Ref.IsTag || src.Ref.Name == "main" || src.Ref.Name == "master"
	timeout := 3600
	if j.Timeout > 0 {
		timeout = int(j.Timeout.Seconds())
	}
	r := &api.JobResponse{
		ID:         id,
		Token:      "berth-exec-" + strconv.FormatInt(id, 10), // no GitLab behind it; redacted all the same
		JobInfo:    api.JobInfo{ID: id, Name: j.Name, Stage: j.Stage, ProjectFullPath: src.Project, ProjectName: lastPart(src.Project), PipelineID: pipeline},
		GitInfo:    api.GitInfo{RepoURL: "file://" + src.Repo, Ref: src.Ref.Name, Sha: src.Sha, RefType: refType, Protected: &protected},
		RunnerInfo: api.RunnerInfo{Timeout: timeout},
		Image:      api.Image{Name: j.Image, Entrypoint: j.Entrypoint},
	}
	for _, s := range j.Services {
		img := api.Image{Name: s.Image, Alias: s.Alias, Entrypoint: s.Entrypoint, Command: s.Command, PullPolicy: s.PullPolicy}
		for _, v := range s.Variables {
			img.Variables = append(img.Variables, api.Variable{Key: v.Key, Value: v.Value})
		}
		r.Services = append(r.Services, img)
	}
	for _, kv := range predefined(j, src, id, pipeline, manual, projectDir) {
		r.Variables = append(r.Variables, api.Variable{Key: kv.Key, Value: kv.Value, Public: true})
	}
	for _, v := range vars {
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

// PredefinedForRef are the variables GitLab sets for a push pipeline of
// ref in project, whose default branch is def: what rules and only/except
// see, and jobs too.
func PredefinedForRef(ref Ref, project, def string) map[string]string {
	slug := strings.Trim(slugRe.ReplaceAllString(strings.ToLower(ref.Name), "-"), "-")
	if len(slug) > 63 {
		slug = slug[:63]
	}
	protected := ref.IsTag || ref.Name == "main" || ref.Name == "master"
	ns := ""
	if i := strings.LastIndex(project, "/"); i > 0 {
		ns = project[:i]
	}
	v := map[string]string{
		"CI": "true", "GITLAB_CI": "true", "CI_SERVER": "yes", "BERTH_EXEC": "true",
		"CI_PIPELINE_SOURCE": "push", "CI_DEFAULT_BRANCH": def,
		"CI_PROJECT_PATH": project, "CI_PROJECT_NAME": lastPart(project), "CI_PROJECT_NAMESPACE": ns,
		"CI_COMMIT_REF_NAME": ref.Name, "CI_COMMIT_REF_SLUG": slug, "CI_COMMIT_REF_PROTECTED": strconv.FormatBool(protected),
		"CI_SERVER_HOST": "localhost", "CI_SERVER_FQDN": "localhost", "CI_SERVER_URL": "http://localhost",
	}
	if ref.IsTag {
		v["CI_COMMIT_TAG"] = ref.Name
	} else {
		v["CI_COMMIT_BRANCH"] = ref.Name
	}
	return v
}

// predefined are the CI_* variables GitLab sets for the job.
func predefined(j *CIJob, src Source, id, pipeline int64, manual bool, projectDir string) []Var {
	base := PredefinedForRef(src.Ref, src.Project, src.DefaultBranch)
	base["CI_JOB_ID"], base["CI_JOB_NAME"], base["CI_JOB_STAGE"] = strconv.FormatInt(id, 10), j.Name, j.Stage
	base["CI_PIPELINE_ID"], base["CI_PROJECT_DIR"] = strconv.FormatInt(pipeline, 10), projectDir
	base["CI_COMMIT_SHA"], base["CI_COMMIT_SHORT_SHA"] = src.Sha, src.Sha[:min(8, len(src.Sha))]
	if manual {
		base["CI_JOB_MANUAL"] = "true"
	}
	if src.User != "" {
		base["GITLAB_USER_LOGIN"] = src.User
	}
	var vs []Var
	for _, k := range sortedStrings(base) {
		vs = append(vs, Var{k, base[k]})
	}
	return vs
}

func sortedStrings(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Script is the runner stage's script, as gitlab-runner would hand it to
// berth: bash on the host for prepare_script and get_sources, the job's
// shell in its container for build_script and after_script.
func Script(stage string, p *api.JobResponse, j *CIJob, projectDir, status string, src Source) string {
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
		if src.FetchRef != "" { // the working tree's commit, on a ref of its own
			fmt.Fprintf(&b, "git -c safe.directory='*' -C %s fetch -q origin %s\n", quote(projectDir), quote(src.FetchRef))
		}
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
