package apply

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/berthci/berth/compose"
)

// A compose file from the checkout, loaded and checked as berth-compose
// does before up; no engine needed.
func TestComposeFileChecks(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // path in the checkout -> content; "->X" makes a link to X
		allow []string
		want  []string // substrings of the refusal; none: accepted
	}{
		{name: "a plain project", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: app\n    volumes: [data:/data]\n    env_file: app.env\nvolumes:\n  data: {}\n", "app.env": "A=1\n"}},
		{name: "env_file outside", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: app\n    env_file: /etc/hostname\n"},
			want: []string{`compose.yaml: service web env_file: "/etc/hostname" is outside the project's checkout (allow it with environments.integration.compose.allow = ["host_files"]`}},
		{name: "env_file through a link", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: app\n    env_file: [{path: sneaky.env}]\n", "sneaky.env": "->/etc/hostname"},
			want: []string{`service web env_file: "sneaky.env" is outside`}},
		{name: "extends a host file", files: map[string]string{"compose.yaml": "services:\n  web:\n    extends: {file: ../../etc/base.yml, service: x}\n"},
			want: []string{`service web extends: "../../etc/base.yml" is outside`}},
		{name: "include outside", files: map[string]string{"compose.yaml": "include: [/etc/other.yaml]\nservices:\n  web:\n    image: app\n"},
			want: []string{`compose.yaml: include: "/etc/other.yaml" is outside`}},
		{name: "interpolated path", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: app\n    env_file: ${HOME}/x.env\n"},
			want: []string{`"${HOME}/x.env" is outside`}},
		{name: ".env is a link out", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: app\n", ".env": "->/etc/hostname"},
			want: []string{`.env: it is a link to a file outside the project's checkout`}},
		{name: "the compose file is a link out", files: map[string]string{"compose.yaml": "->/etc/hostname"},
			want: []string{`compose.yaml: the compose file is a link to a file outside`}},
		{name: "privileges and host access", files: map[string]string{"compose.yaml": `services:
  web:
    image: app
    privileged: true
    cap_add: [SYS_ADMIN]
    devices: ["/dev/fuse:/dev/fuse"]
    network_mode: host
    pid: host
    security_opt: ["seccomp:unconfined"]
    volumes: ["/var/run/docker.sock:/var/run/docker.sock", "/:/host", "./conf:/conf"]
  side:
    image: app
    volumes_from: ["container:berth-job-1"]
    container_name: web-0123456789ab
    labels: {berth.env: web}
    build: {context: /etc}
    volumes: ["hostdir:/h"]
    secrets: [s]
    networks: [n]
volumes:
  hostdir:
    driver_opts: {type: none, o: bind, device: /etc}
secrets:
  s: {file: /etc/shadow}
networks:
  n: {name: berth-job-9}
`},
			want: []string{
				"service web: privileged: true", "service web: cap_add: SYS_ADMIN", "service web: devices",
				"service web: network_mode: host", "service web: pid: host", "service web: security_opt: seccomp:unconfined",
				"service web: the Docker socket (/var/run/docker.sock) as a volume", "service web: the host path / as a volume",
				"service web: the host path ", /* the checkout's ./conf, bound from the host */
				"service side: volumes_from: container:berth-job-1", "service side: container_name: web-0123456789ab, a name berth uses",
				"service side: label berth.env", "service side build: context /etc is outside",
				"volume hostdir: driver_opts that mount the host path /etc", "secret s: file: /etc/shadow, outside",
				"network n: name: berth-job-9, a network berth uses",
			}},
		{name: "allowed by the operator", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: docker\n    privileged: true\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"},
			allow: []string{"privileged", "docker_socket"}},
		{name: "the project's own names", files: map[string]string{"compose.yaml": "services:\n  web:\n    image: app\n    container_name: berth-int-web\nnetworks:\n  default: {name: berth-int_default}\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tt.files {
				p := filepath.Join(dir, name)
				require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
				if target, ok := strings.CutPrefix(body, "->"); ok {
					require.NoError(t, os.Symlink(target, p))
					continue
				}
				require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
			}
			req := compose.Request{Env: "integration", Project: "berth-int", WorkingDir: dir, Image: "app@sha256:0", Allow: tt.allow,
				Reserved: []string{"web"}, Services: []string{"web"}}
			p, err := Load(context.Background(), req)
			if err == nil {
				services, cerr := chosen(p, req)
				require.NoError(t, cerr)
				err = Check(p, req, services)
			}
			if len(tt.want) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}
