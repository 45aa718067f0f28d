package compose

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/settings"
	"github.com/berthci/berth/stages"
)

// Compose's own labels, which `docker compose ps` reads too.
const (
	labelProject = "com.docker.compose.project"
	labelService = "com.docker.compose.service"
)

// Engine is what the driver needs from the target engine itself.
type Engine interface {
	stages.LockEngine
	ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
}

// Driver deploys to a compose project on a Docker host.
type Driver struct {
	Env        string
	Spec       settings.ComposeSpec
	DockerHost string
	SSHOptions []string
	Engine     Engine
	Apply      Applier
	Creds      *stages.Credentials
	Out        io.Writer
	// Dir is where relative compose files are: the checked-out sources in
	// a job, the current directory for operator commands.
	Dir string
}

var _ stages.Driver = (*Driver)(nil)

// Lock is the same lock as the container driver's, on the target engine.
func (d *Driver) Lock(ctx context.Context, h stages.Holder, timeout time.Duration) (func(), error) {
	return stages.EngineLock(ctx, d.Engine, d.Creds, d.Out, d.Env, h, timeout)
}

// LockImage is the image of a container berth deployed in the project.
func (d *Driver) LockImage(ctx context.Context) string {
	list, err := d.deployed(ctx)
	if err != nil || len(list) == 0 {
		return ""
	}
	return list[0].ImageID
}

// Deploy points the services at the release by digest and brings the
// project up; when it does not come up, the previous digest goes back.
func (d *Driver) Deploy(ctx context.Context, r stages.Release) error {
	if err := stages.PullOnTarget(ctx, d.Engine, d.Creds, r.Image); err != nil {
		return err
	}
	cur, running, err := d.state(ctx)
	if err != nil {
		return err
	}
	next := cur.then(entryOf(r), "replaced")
	if !running {
		next = state{current: entryOf(r), earlier: cur.earlier}
	}
	return d.switchTo(ctx, next, cur, running, r.Tag)
}

// switchTo brings the project up at next; on failure back at cur.
func (d *Driver) switchTo(ctx context.Context, next, cur state, hadCur bool, what string) error {
	t := time.Now()
	fmt.Fprintf(d.Out, "berth: %s: compose up, project %s, on %s\n", d.Env, d.Spec.Project, orImage(next.current.Tag, next.current.Image))
	res, err := d.Apply.Apply(ctx, d.request(next))
	if err != nil {
		return err
	}
	if res.Error == "" {
		fmt.Fprintf(d.Out, "berth: %s: %s up and running in %s\n", d.Env, strings.Join(res.Services, ", "), time.Since(t).Round(time.Millisecond))
		return nil
	}
	if res.Class != "build" {
		return res.Err()
	}
	failure := res.Error
	if res.Logs != "" {
		failure += fmt.Sprintf("\nLast log lines of %s:\n%s", res.Failing, strings.TrimRight(res.Logs, "\n"))
	}
	if !hadCur {
		return executor.Buildf("%s: %s (%s) did not come up: %s\nnothing ran before, so nothing serves now.", d.Env, d.Spec.Project, what, failure)
	}
	fmt.Fprintf(d.Out, "berth: %s: %s did not come up; putting %s back\n", d.Env, what, cur.current.Image)
	failed := cur
	failedEntry := next.current
	failedEntry.Result = "failed, previous restored"
	failed.earlier = append([]entry{failedEntry}, cur.earlier...)
	back, err := d.Apply.Apply(context.WithoutCancel(ctx), d.request(failed))
	if err == nil {
		err = back.Err()
	}
	if err != nil {
		return executor.Systemf("%s: %s did not come up (%s), and putting the previous digest back failed too: %v", d.Env, what, failure, err)
	}
	return executor.Buildf("%s: %s did not come up: %s\nThe previous digest (%s) serves again.", d.Env, what, failure, cur.current.Image)
}

func (d *Driver) request(s state) Request {
	return Request{
		DockerHost: d.DockerHost, SSHOptions: d.SSHOptions, Project: d.Spec.Project, WorkingDir: d.Dir,
		Files: d.Spec.Files, EnvFiles: d.Spec.EnvFiles, Profiles: d.Spec.Profiles, WaitTimeout: d.Spec.WaitTimeout.D(),
		Image: s.current.Image, Services: d.Spec.Services, Labels: s.labels(d.Env, d.Spec.Keep),
	}
}

// deployed are the project's containers that berth deployed, newest first.
func (d *Driver) deployed(ctx context.Context) ([]container.Summary, error) {
	list, err := d.Engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", labelProject+"="+d.Spec.Project), filters.Arg("label", stages.LabelEnv+"="+d.Env))})
	if err != nil {
		return nil, executor.Systemf("list the containers of project %s: %w", d.Spec.Project, err)
	}
	sort.Slice(list, func(i, k int) bool { return list[i].Created > list[k].Created })
	return list, nil
}

// state reads the environment from the newest container berth deployed in
// the project; running says whether there is one.
func (d *Driver) state(ctx context.Context) (state, bool, error) {
	list, err := d.deployed(ctx)
	if err != nil || len(list) == 0 {
		return state{}, false, err
	}
	return stateOf(list[0].Labels, list[0].Image), true, nil
}

// Rollback brings back the newest earlier deployment that did not fail, or
// the one whose tag or digest is to.
func (d *Driver) Rollback(ctx context.Context, to, by string) (stages.Record, error) {
	cur, ok, err := d.state(ctx)
	if err != nil {
		return stages.Record{}, err
	}
	if !ok {
		return stages.Record{}, executor.Buildf("%s: project %s runs nothing: deploy a version first", d.Env, d.Spec.Project)
	}
	var target *entry
	for i, e := range cur.earlier {
		if strings.HasPrefix(e.Result, "failed") || e.Image == cur.current.Image {
			continue
		}
		if to == "" || e.Tag == to || e.Digest == to || strings.HasSuffix(e.Image, "@"+to) {
			target = &cur.earlier[i]
			break
		}
	}
	if target == nil {
		what := "an earlier version"
		if to != "" {
			what = to
		}
		return stages.Record{}, executor.Buildf("the history of %s holds no %s to roll back to (berth history %s lists it): deploy it instead", d.Env, what, d.Env)
	}
	if err := stages.PullOnTarget(ctx, d.Engine, d.Creds, target.Image); err != nil {
		return stages.Record{}, err
	}
	back := *target
	back.Result, back.Time = "", time.Now().UTC()
	next := cur.then(back, "rolled back by "+by)
	if err := d.switchTo(ctx, next, cur, true, "rollback to "+orImage(back.Tag, back.Image)); err != nil {
		return stages.Record{}, err
	}
	return back.record("serving"), nil
}

// History is the current deployment and the earlier ones, newest first.
func (d *Driver) History(ctx context.Context) ([]stages.Record, error) {
	cur, ok, err := d.state(ctx)
	if err != nil || !ok {
		return nil, err
	}
	recs := []stages.Record{cur.current.record("serving")}
	for _, e := range cur.earlier {
		recs = append(recs, e.record(""))
	}
	return recs, nil
}

func orImage(tag, image string) string {
	if tag != "" {
		return tag
	}
	return image
}
