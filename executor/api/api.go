// Package api holds the wire types of the custom executor protocol: the JSON
// that `config` prints for the runner, and the job payload that the runner
// hands every stage in JOB_RESPONSE_FILE.
package api

// ConfigOutput is what `berth config` prints on stdout.
type ConfigOutput struct {
	BuildsDir         string            `json:"builds_dir"`
	CacheDir          string            `json:"cache_dir"`
	BuildsDirIsShared bool              `json:"builds_dir_is_shared"`
	Hostname          string            `json:"hostname"`
	Driver            Driver            `json:"driver"`
	Shell             string            `json:"shell"`
	JobEnv            map[string]string `json:"job_env,omitempty"`
}

// Driver names the executor in the job log's "Using Custom executor" line.
type Driver struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// JobResponse is the part of GitLab's job payload that berth reads. It is the
// only trusted job context: CUSTOM_ENV_* values can be set by the job itself.
type JobResponse struct {
	ID          int64         `json:"id"`
	Token       string        `json:"token"`
	JobInfo     JobInfo       `json:"job_info"`
	GitInfo     GitInfo       `json:"git_info"`
	RunnerInfo  RunnerInfo    `json:"runner_info"`
	Variables   []Variable    `json:"variables"`
	Steps       []Step        `json:"steps"`
	Image       Image         `json:"image"`
	Services    []Image       `json:"services"`
	Credentials []Credentials `json:"credentials"`
	Cache       []Cache       `json:"cache"`
}

// Cache is one of the job's cache: entries; berth reads only its key.
type Cache struct {
	Key string `json:"key"`
}

type JobInfo struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	Stage           string `json:"stage"`
	ProjectID       int64  `json:"project_id"`
	ProjectName     string `json:"project_name"`
	ProjectFullPath string `json:"project_full_path"`
	PipelineID      int64  `json:"pipeline_id"`
}

// Ref types in GitInfo.RefType.
const (
	RefTypeBranch = "branch"
	RefTypeTag    = "tag"
)

type GitInfo struct {
	RepoURL   string   `json:"repo_url"`
	Ref       string   `json:"ref"`
	Sha       string   `json:"sha"`
	BeforeSha string   `json:"before_sha"`
	RefType   string   `json:"ref_type"`
	Refspecs  []string `json:"refspecs"`
	Depth     int      `json:"depth"`
	// Protected is whether GitLab protects the ref (GitLab 18.3 and later
	// send it); nil when an older GitLab did not say.
	Protected *bool `json:"protected"`
}

type RunnerInfo struct {
	Timeout int `json:"timeout"` // seconds
}

type Variable struct {
	Key      string `json:"key"`
	Value    string `json:"value"`
	Public   bool   `json:"public"`
	Internal bool   `json:"-"`
	File     bool   `json:"file"`
	Masked   bool   `json:"masked"`
	Raw      bool   `json:"raw"`
}

type Step struct {
	Name         string   `json:"name"`
	Script       []string `json:"script"`
	Timeout      int      `json:"timeout"`
	When         string   `json:"when"`
	AllowFailure bool     `json:"allow_failure"`
}

// Image is the job's image or one of its services.
type Image struct {
	Name       string     `json:"name"`
	Alias      string     `json:"alias,omitempty"`
	Command    []string   `json:"command,omitempty"`
	Entrypoint []string   `json:"entrypoint,omitempty"`
	Variables  []Variable `json:"variables,omitempty"`
	PullPolicy []string   `json:"pull_policy,omitempty"`
}

// Credentials are the registry logins GitLab sends with the job.
type Credentials struct {
	Type     string `json:"type"`
	URL      string `json:"url"`
	Username string `json:"username"`
	Password string `json:"password"`
}
