package containers

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"

	"github.com/berthci/berth/stages/driver"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/executor/failure"
	"github.com/berthci/berth/executor/settings"
)

// The anchor is a container that owns an environment's network namespace
// and published ports; the app's containers join it (network mode
// container:NAME-net). A switch then stops one process and starts another
// in a namespace that stays up: the engine neither tears down nor re-plumbs
// the port, and no client waits out the bridge's one-second ARP retry that a
// container coming up under traffic costs (docs/deploy.md).

const (
	RoleAnchor        = "anchor"
	labelAnchorLayout = "berth.anchor.layout" // ports and networks it was made with
	anchorImageRepo   = "berth-anchor"
)

// AnchorName is the anchor container of the environment container name.
func AnchorName(name string) string { return name + "-net" }

// anchorLayout is what the anchor was made for: when the ports or networks
// in berth.toml change, the anchor is made again.
func anchorLayout(exposed nat.PortSet, bindings nat.PortMap, networks []string) string {
	var parts []string
	for p := range exposed {
		b := make([]string, 0, len(bindings[p]))
		for _, pb := range bindings[p] {
			b = append(b, pb.HostIP+":"+pb.HostPort)
		}
		sort.Strings(b)
		parts = append(parts, string(p)+"="+strings.Join(b, ","))
	}
	sort.Strings(parts)
	return strings.Join(parts, ";") + "|" + strings.Join(networks, ",")
}

// anchorImage makes the anchor image present on the target, imported from
// berth's own binary (it runs `berth anchor`, which waits for a signal).
// It returns "" and why when the target cannot run that binary.
func (d *Driver) anchorImage(ctx context.Context) (ref, why string, err error) {
	if d.Spec.PortsOn == settings.PortsOnContainer {
		return "", "", nil
	}
	if d.AnchorBinary == "" {
		return "", "no berth binary to make the anchor from", nil
	}
	sum, why, err := staticBinarySum(d.AnchorBinary)
	if err != nil || why != "" {
		return "", why, err
	}
	v, err := d.Engine.ServerVersion(ctx)
	if err != nil {
		return "", "", failure.Systemf("ask the target engine its version: %w", err)
	}
	if v.Os != "linux" || v.Arch != runtime.GOARCH {
		return "", fmt.Sprintf("the target is %s/%s, berth is linux/%s", v.Os, v.Arch, runtime.GOARCH), nil
	}
	ref = anchorImageRepo + ":" + sum[:12]
	if _, err := d.Engine.ImageInspect(ctx, ref); err == nil {
		return ref, "", nil
	}
	f, err := os.Open(d.AnchorBinary)
	if err != nil {
		return "", "", failure.Systemf("read berth's binary for the anchor image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", "", failure.Systemf("read berth's binary for the anchor image: %w", err)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "berth", Mode: 0o755, Size: st.Size(), Typeflag: tar.TypeReg})
		if err == nil {
			_, err = io.Copy(tw, f)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	rc, err := d.Engine.ImageImport(ctx, image.ImportSource{Source: pr, SourceName: "-"}, ref, image.ImportOptions{
		Changes: []string{`ENTRYPOINT ["/berth", "anchor"]`, "LABEL " + engine.LabelRole + "=" + RoleAnchor},
	})
	if err == nil {
		err = engine.ReadProgressClose(rc)
	}
	if err != nil {
		return "", "", failure.Systemf("import the anchor image %s on the target: %w", ref, err)
	}
	return ref, "", nil
}

// staticBinarySum is the binary's sha256, or why it cannot run in an empty
// image.
func staticBinarySum(path string) (sum, why string, err error) {
	ef, err := elf.Open(path)
	if err != nil {
		return "", fmt.Sprintf("%s is not a Linux binary", path), nil
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			ef.Close()
			return "", fmt.Sprintf("%s is dynamically linked (build it with CGO_ENABLED=0)", path), nil
		}
	}
	ef.Close()
	f, err := os.Open(path)
	if err != nil {
		return "", "", failure.Systemf("read berth's binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", "", failure.Systemf("read berth's binary: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), "", nil
}

// anchorConfig renders the anchor: the ports and networks of the
// environment, the container name as its alias on user networks.
func (d *Driver) anchorConfig(ref string, exposed nat.PortSet, bindings nat.PortMap) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	name := d.Spec.Name
	cfg := &container.Config{Image: ref, ExposedPorts: exposed, Labels: map[string]string{
		driver.LabelEnv: d.Env, engine.LabelRole: RoleAnchor, labelAnchorLayout: anchorLayout(exposed, bindings, d.Spec.Networks),
	}}
	host := &container.HostConfig{PortBindings: bindings, RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}}
	netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{}}
	for i, n := range d.Spec.Networks {
		if i == 0 {
			host.NetworkMode = container.NetworkMode(n)
		}
		ep := &network.EndpointSettings{}
		if !container.NetworkMode(n).IsDefault() && !container.NetworkMode(n).IsBridge() {
			ep.Aliases = []string{name} // the engine allows aliases on user networks only
		}
		netCfg.EndpointsConfig[n] = ep
	}
	return cfg, host, netCfg
}
