package executor

import (
	"context"
	"debug/elf"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/errdefs"

	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// The helper container runs every stage the runner hands berth that is not
// the job's own script: get_sources with the job's hooks, caches,
// artifacts, file variables. Like the Docker executor's helper, it is a
// container of the operator's helper image, on the job's network, seeing
// the job's builds dir and its project's cache dir only. Nothing of the
// job's runs on the runner host.

// RoleHelper labels the helper container.
const RoleHelper = "helper"

// helperBinDir is where the runner binary is mounted in the helper
// container, first on its PATH.
const helperBinDir = "/opt/berth/bin"

// HelperName is the job's helper container.
func HelperName(j *Job) string { return helperNameOf(j.IDString()) }

func helperNameOf(jobID string) string { return containerNameOf(jobID) + "-helper" }

// helperSetup runs at the helper's start, then keeps it alive on an open
// stdin. With a runner binary mounted there is nothing to do; with the
// image's own, the runner's scripts call gitlab-runner, so GitLab's
// gitlab-runner-helper answers to that name too.
const helperSetup = `if ! command -v gitlab-runner >/dev/null 2>&1 && command -v gitlab-runner-helper >/dev/null 2>&1; then ` +
	`mkdir -p ` + helperBinDir + ` && ln -sf "$(command -v gitlab-runner-helper)" ` + helperBinDir + `/gitlab-runner; fi; exec sh`

// createHelper makes the job's helper container, on network (a network
// name, or container:ID to share the job container's).
func (e *Executor) createHelper(ctx context.Context, network string) (string, error) {
	img := e.Settings.Job.HelperImage
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if ins, err := e.Engine.ImageInspect(ctx, img); err == nil && ins.Config != nil {
		for _, kv := range ins.Config.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				path = v
			}
		}
	}
	dir := JobDir(e.Settings, e.Job)
	cache := CacheDirFor(e.Settings, e.Job)
	mounts := []mount.Mount{
		{Type: mount.TypeBind, Source: dir, Target: dir},
		{Type: mount.TypeBind, Source: cache, Target: cache},
	}
	if e.RunnerBinary != "" {
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: e.RunnerBinary, Target: helperBinDir + "/gitlab-runner", ReadOnly: true})
	}
	// a local repository (berth exec, tests): GitLab itself always sends
	// an http(s) URL. git_info is GitLab's, not the job's.
	if repo := localRepo(e.Job.RepoURL); repo != "" {
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: repo, Target: repo, ReadOnly: true})
	}
	cfg := &container.Config{
		Image:      img,
		Entrypoint: []string{"sh", "-c", helperSetup},
		OpenStdin:  true,
		WorkingDir: dir,
		Env:        []string{"PATH=" + helperBinDir + ":" + path},
		Labels:     e.labels(RoleHelper),
	}
	host := e.hostConfig(mounts)
	if e.SelfBinary != "" { // berth serves the stages itself (helperserve.go)
		sockDir := HelperSocketDir(dir)
		host.Mounts = append(host.Mounts,
			mount.Mount{Type: mount.TypeBind, Source: e.SelfBinary, Target: helperBinDir + "/berth", ReadOnly: true},
			mount.Mount{Type: mount.TypeBind, Source: sockDir, Target: sockDir})
		cfg.Entrypoint, cfg.OpenStdin = []string{helperBinDir + "/berth", "helper", HelperSocket(dir), dir}, false
	}
	// tini reaps what the stages leave behind, and ends the container on
	// TERM, which a shell as PID 1 ignores
	init := true
	host.Init = &init
	host.NetworkMode = container.NetworkMode(network)
	name := HelperName(e.Job)
	resp, err := e.Engine.ContainerCreate(ctx, cfg, host, nil, nil, name)
	if errdefs.IsConflict(err) {
		// the same job's, prepared again after a cleanup that left it
		// killed for `berth spares` to remove
		_ = e.Engine.ContainerRemove(ctx, name, container.RemoveOptions{Force: true})
		resp, err = e.Engine.ContainerCreate(ctx, cfg, host, nil, nil, name)
	}
	if err != nil {
		return "", failure.Systemf("create the helper container %s from %s: %s (check job.helper_image in berth.toml)", name, img, e.redactErr(err))
	}
	return resp.ID, nil
}

// startHelper starts the helper container.
func (e *Executor) startHelper(ctx context.Context, id string) error {
	if err := e.Engine.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return failure.Systemf("start the helper container from %s: %s: job.helper_image needs sh, bash and git", e.Settings.Job.HelperImage, e.redactErr(err))
	}
	return nil
}

// localRepo is the path of a file:// repository URL, else "".
func localRepo(repoURL string) string {
	u, err := url.Parse(repoURL)
	if err != nil || u.Scheme != "file" || !filepath.IsAbs(u.Path) {
		return ""
	}
	return filepath.Clean(u.Path)
}

// CacheDirFor is the job's cache dir: its project's own, and within that
// one for protected refs and one for the rest, as the Docker executor keeps
// its cache volumes. The project is the payload's (job_info), never a
// variable.
func CacheDirFor(s *settings.Settings, j *Job) string {
	project := fmt.Sprintf("project-%d", j.ProjectID)
	if j.ProjectID <= 0 {
		project = "path-" + strings.ReplaceAll(strings.ToLower(j.Project), "/", "-")
	}
	// git_info.protected decides; only an older GitLab that does not send
	// it leaves the "-protected" suffix GitLab puts on cache keys
	protected := j.Protected
	if !j.ProtectedKnown {
		protected = j.ProtectedCacheKey
	}
	protection := "unprotected"
	if protected {
		protection = "protected"
	}
	return filepath.Join(s.CacheDir, project, protection)
}

// FindRunnerBinary is the gitlab-runner to mount into helper containers:
// the operator's, else the runner that started berth, else gitlab-runner
// on PATH. It must be static to run in any image; a dynamic one, or none,
// leaves the helper image's own, and why.
func FindRunnerBinary(configured string, ppid int, lookPath func(string) (string, error)) (path, why string) {
	switch configured {
	case settings.RunnerBinaryImage:
		return "", ""
	case "":
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid)); err == nil && strings.HasPrefix(filepath.Base(exe), "gitlab-runner") {
			path = exe
		} else if p, err := lookPath("gitlab-runner"); err == nil {
			path, _ = filepath.Abs(p)
		} else {
			return "", "no gitlab-runner started berth or is on PATH"
		}
	default:
		path = configured
	}
	static, err := isStatic(path)
	if err != nil {
		return "", fmt.Sprintf("job.runner_binary %s: %v", path, err)
	}
	if !static {
		return "", fmt.Sprintf("%s is dynamically linked and cannot run in another image", path)
	}
	return path, ""
}

// IsStatic says whether path is a static ELF binary, which runs in any
// Linux image.
func IsStatic(path string) bool {
	ok, err := isStatic(path)
	return ok && err == nil
}

// isStatic says whether an ELF binary needs no dynamic loader.
func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// clearAsRoot empties dir, which containers running as root wrote to and
// the runner's user may not be allowed to remove: through the job's helper
// if it still runs, else through a one-off container of the helper image.
func (e *Executor) clearAsRoot(ctx context.Context, dir string) error {
	cmd := []string{"sh", "-c", `rm -rf "$1"/* "$1"/.[!.]* "$1"/..?*`, "sh", dir}
	if ins, err := e.Engine.ContainerInspect(ctx, HelperName(e.Job)); err == nil && ins.State.Running {
		if code, err := e.execWait(ctx, ins.ID, cmd); err == nil && code == 0 {
			return nil
		}
	}
	return RunOnce(ctx, e.Engine, e.Settings.Job.HelperImage, cmd, dir, e.labels(RoleHelper))
}

// execWait runs cmd in a container and returns its exit code.
func (e *Executor) execWait(ctx context.Context, id string, cmd []string) (int, error) {
	ex, err := e.Engine.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return 0, err
	}
	hj, err := e.Engine.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, hj.Reader)
	hj.Close()
	ins, err := e.Engine.ContainerExecInspect(ctx, ex.ID)
	return ins.ExitCode, err
}

// RunOnce runs cmd in a new container of img that sees dir, waits for it
// and removes it.
func RunOnce(ctx context.Context, eng Engine, img string, cmd []string, dir string, labels map[string]string) error {
	resp, err := eng.ContainerCreate(ctx, &container.Config{Image: img, Entrypoint: cmd[:1], Cmd: cmd[1:], Labels: labels},
		&container.HostConfig{Mounts: []mount.Mount{{Type: mount.TypeBind, Source: dir, Target: dir}}, NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		return fmt.Errorf("create a container of %s to clear %s: %w", img, dir, err)
	}
	defer func() {
		_ = eng.ContainerRemove(context.WithoutCancel(ctx), resp.ID, container.RemoveOptions{Force: true})
	}()
	if err := eng.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start a container of %s to clear %s: %w", img, dir, err)
	}
	waitC, errC := eng.ContainerWait(ctx, resp.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waitC:
		if w.StatusCode != 0 {
			return fmt.Errorf("clearing %s in a container of %s exited with %d", dir, img, w.StatusCode)
		}
		return nil
	case err := <-errC:
		return fmt.Errorf("wait for the container clearing %s: %w", dir, err)
	}
}
