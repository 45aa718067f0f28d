package executor

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/executor/api"
	"github.com/berthci/berth/executor/failure"
)

// Job is the trusted job context, read from JOB_RESPONSE_FILE only.
type Job struct {
	ID        int64
	Name      string
	Stage     string
	Pipeline  int64
	Project   string // full path, group/app
	ProjectID int64
	Ref       string
	RefType   string // api.RefTypeBranch or api.RefTypeTag
	Sha       string
	// Protected is git_info.protected: GitLab protects the ref. An older
	// GitLab that does not send it counts as unprotected.
	Protected bool
	// ProtectedKnown says the payload carried git_info.protected.
	ProtectedKnown bool
	// ProtectedCacheKey says GitLab gave a cache key of a protected ref
	// (its "-protected" suffix), which keeps the protected caches too.
	ProtectedCacheKey bool
	// RepoURL is where get_sources fetches from.
	RepoURL  string
	Timeout  time.Duration
	Image    api.Image
	Services []api.Image
	// Variables are the job's variables as GitLab sent them.
	Variables   []api.Variable
	Credentials []api.Credentials
	// AfterScript says the job has after_script lines.
	AfterScript bool
	token       string
}

// LoadJob reads the payload the runner wrote for this job.
func LoadJob(path string) (*Job, error) {
	if path == "" {
		return nil, failure.Systemf("JOB_RESPONSE_FILE is not set: berth config|prepare|run|cleanup must be started by gitlab-runner's custom executor")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, failure.Systemf("read job payload: %w", err)
	}
	var r api.JobResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, failure.Systemf("job payload %s is not valid JSON: %w", path, err)
	}
	if r.ID <= 0 {
		return nil, failure.Systemf("job payload %s has no job id", path)
	}
	return NewJob(&r), nil
}

// NewJob derives the job context from a payload.
func NewJob(r *api.JobResponse) *Job {
	after := false
	for _, st := range r.Steps {
		after = after || (st.Name == "after_script" && len(st.Script) > 0)
	}
	timeout := time.Duration(r.RunnerInfo.Timeout) * time.Second
	if timeout <= 0 {
		timeout = time.Hour // GitLab's default job timeout
	}
	j := &Job{
		ID:          r.ID,
		Name:        r.JobInfo.Name,
		Stage:       r.JobInfo.Stage,
		Pipeline:    r.JobInfo.PipelineID,
		Project:     r.JobInfo.ProjectFullPath,
		ProjectID:   r.JobInfo.ProjectID,
		Ref:         r.GitInfo.Ref,
		RefType:     r.GitInfo.RefType,
		Sha:         r.GitInfo.Sha,
		RepoURL:     r.GitInfo.RepoURL,
		Timeout:     timeout,
		Image:       r.Image,
		Services:    r.Services,
		Variables:   r.Variables,
		Credentials: r.Credentials,
		AfterScript: after,
		token:       r.Token,
	}
	if r.GitInfo.Protected != nil {
		j.Protected, j.ProtectedKnown = *r.GitInfo.Protected, true
	}
	for _, c := range r.Cache {
		if strings.HasSuffix(c.Key, "-protected") && !strings.HasSuffix(c.Key, "-non_protected") {
			j.ProtectedCacheKey = true
		}
	}
	return j
}

// RegistryLogin is the registry login GitLab sends with the job (the job
// token, for the GitLab container registry): its host, user and password.
func (j *Job) RegistryLogin() (host, user, password string) {
	for _, c := range j.Credentials {
		if c.Type == "registry" && c.URL != "" {
			return RegistryHost(c.URL), c.Username, c.Password
		}
	}
	return "", "", ""
}

// IDString is the job id as labels and names use it.
func (j *Job) IDString() string { return strconv.FormatInt(j.ID, 10) }

// Secrets are the values that must never be printed: the job token,
// registry passwords and masked variables.
func (j *Job) Secrets() []string {
	s := []string{j.token}
	for _, c := range j.Credentials {
		s = append(s, c.Password)
	}
	for _, v := range j.Variables {
		if v.Masked {
			s = append(s, v.Value)
		}
	}
	return s
}

func (j *Job) String() string {
	return fmt.Sprintf("job %d (%s, %s %s)", j.ID, j.Name, j.RefType, j.Ref)
}
