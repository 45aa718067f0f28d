package rollout

import (
	"context"
	"strings"

	"github.com/berthci/berth/stages/driver"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/berthci/berth/executor/failure"
)

// Rollback goes back to the newest earlier revision that did not fail, or
// to the revision whose tag or digest is to; a digest that no revision has
// is set as the image, like a deploy.
func (d *Driver) Rollback(ctx context.Context, to, by string) (driver.Record, error) {
	dep, err := d.deployment(ctx)
	if err != nil {
		return driver.Record{}, err
	}
	revs, err := d.revisions(ctx, dep)
	if err != nil {
		return driver.Record{}, err
	}
	cur := dep.Annotations[annRevision]
	var target, leaving *appsv1.ReplicaSet
	cands := make([]driver.RollbackCandidate, len(revs))
	for i := range revs {
		rs := &revs[i]
		if rs.Annotations[annRevision] == cur {
			leaving = rs
		}
		cands[i] = driver.RollbackCandidate{Tag: rs.Annotations[driver.LabelTag], Digest: rs.Annotations[driver.LabelDigest], Image: imagesOf(&rs.Spec.Template),
			Failed:  rs.Annotations[annResult] == "failed",
			Current: rs.Annotations[annRevision] == cur || imagesOf(&rs.Spec.Template) == imagesOf(&dep.Spec.Template)}
	}
	if i, ok := driver.ChooseRollback(cands, to); ok {
		target = &revs[i]
	}
	if target == nil && strings.HasPrefix(to, "sha256:") {
		return d.rollbackToDigest(ctx, dep, to, by)
	}
	if target == nil {
		what := "an earlier revision"
		if to != "" {
			what = to
		}
		return driver.Record{}, failure.Buildf("%s: %s has no %s to roll back to (berth history %s lists its revisions): deploy it instead", d.Env, d.where(), what, d.Env)
	}
	d.say("rolling back to revision %s (%s)", target.Annotations[annRevision], imagesOf(&target.Spec.Template))
	back, err := d.restore(ctx, target, leaving, "rolled back by "+by)
	if err != nil {
		return driver.Record{}, failure.Buildf("%s: roll back to revision %s: %v", d.Env, target.Annotations[annRevision], err)
	}
	d.say("revision %s (%s) serves again", back.revision, back.image)
	rec := recordOf(target, "serving")
	return rec, nil
}

// rollbackToDigest sets a digest of the image that no kept revision has.
func (d *Driver) rollbackToDigest(ctx context.Context, dep *appsv1.Deployment, digest, by string) (driver.Record, error) {
	names, err := d.containers(dep, dep.Spec.Template.Spec.Containers[0].Image)
	if err != nil {
		return driver.Record{}, err
	}
	img := dep.Spec.Template.Spec.Containers[indexOf(dep.Spec.Template.Spec.Containers, names[0])].Image
	r := driver.Release{Env: d.Env, Image: repository(img) + "@" + digest, Digest: digest, Tag: digest, Ref: "rollback", By: by}
	if err := d.Deploy(ctx, r, nil); err != nil {
		return driver.Record{}, err
	}
	return driver.Record{Digest: digest, By: by, Result: "serving"}, nil
}

// History lists the revisions that the Deployment keeps, newest first.
func (d *Driver) History(ctx context.Context) ([]driver.Record, error) {
	dep, err := d.deployment(ctx)
	if err != nil {
		return nil, err
	}
	revs, err := d.revisions(ctx, dep)
	if err != nil {
		return nil, err
	}
	var out []driver.Record
	for i := range revs {
		result := revs[i].Annotations[annResult]
		switch {
		case revs[i].Annotations[annRevision] == dep.Annotations[annRevision]:
			result = "serving"
		case result == "failed":
			result = "failed, previous restored"
		case result == "":
			result = "replaced"
		}
		out = append(out, recordOf(&revs[i], result))
	}
	return out, nil
}

func recordOf(rs *appsv1.ReplicaSet, result string) driver.Record {
	r := driver.EntryOfLabels(rs.Annotations, result).Record()
	r.Time, r.ID = rs.CreationTimestamp.Time, "revision "+rs.Annotations[annRevision]
	if r.Digest == "" { // a revision berth did not make
		r.Tag = imagesOf(&rs.Spec.Template)
	}
	return r
}
