package settings

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		toml    string
		wantErr []string // substrings; empty means valid
		check   func(t *testing.T, s Settings)
	}{
		{name: "empty file keeps defaults", toml: "", check: func(t *testing.T, s Settings) {
			assert.Equal(t, Defaults(), s)
		}},
		{name: "values override defaults", toml: "builds_dir = \"/b\"\n[job]\ndefault_image = \"busybox:local\"\nstop_grace = \"2s\"\nvolumes = [\"/srv:/srv:ro\"]\n",
			check: func(t *testing.T, s Settings) {
				assert.Equal(t, "/b", s.BuildsDir)
				assert.Equal(t, "/var/lib/berth/cache", s.CacheDir)
				assert.Equal(t, "busybox:local", s.Job.DefaultImage)
				assert.Equal(t, 2*time.Second, s.Job.StopGrace.D())
			}},
		{name: "syntax error names file and line", toml: "builds_dir = \"/b\"\n[job]\npull_policy = always\n",
			wantErr: []string{"berth.toml:3:", "expected value"}},
		{name: "unknown key names file, line and key", toml: "builds_dir = \"/b\"\n\n[job]\ndefault_imag = \"x\"\n",
			wantErr: []string{`berth.toml:4: unknown key "job.default_imag"`}},
		{name: "unknown table is reported once", toml: "[jobs]\nfoo = 1\nbar = 2\n",
			wantErr: []string{`berth.toml:1: unknown key "jobs"`}},
		{name: "wrong type names the file", toml: "builds_dir = 3\n", wantErr: []string{"berth.toml:", "builds_dir"}},
		{name: "bad duration", toml: "[job]\nstop_grace = \"soon\"\n", wantErr: []string{"not a duration"}},
		{name: "relative builds dir", toml: "builds_dir = \"builds\"\n", wantErr: []string{"builds_dir", "absolute"}},
		{name: "bad pull policy", toml: "[job]\npull_policy = \"sometimes\"\n", wantErr: []string{"job.pull_policy", "sometimes"}},
		{name: "too many helper spares", toml: "[job]\nhelper_spares = 17\n", wantErr: []string{"job.helper_spares", "between 0 (none) and 16"}},
		{name: "negative helper spares", toml: "[job]\nhelper_spares = -1\n", wantErr: []string{"job.helper_spares"}},
		{name: "bad volume", toml: "[job]\nvolumes = [\"/a\"]\n", wantErr: []string{"job.volumes", "HOST:CONTAINER"}},
		{name: "bad log level", toml: "log_level = \"loud\"\n", wantErr: []string{"log_level"}},
		{name: "bad stage action", toml: "[stages]\nship = \"launch\"\n", wantErr: []string{"stages.ship", "launch"}},
		{name: "flow with branch and tag", toml: "[[flows]]\nname = \"x\"\nbranch = \"a\"\ntag = \"b\"\nimage_tag = \"t\"\n", wantErr: []string{`berth.toml:1: flows[0]: flow "x"`, "exactly one"}},
		{name: "flow with bad pattern", toml: "[[flows]]\nname = \"x\"\nbranch = \"(\"\nimage_tag = \"t\"\n", wantErr: []string{"bad pattern"}},
		{name: "flow to unknown environment", toml: "[[flows]]\nname = \"x\"\nbranch = \"a\"\nimage_tag = \"t\"\nenvironment = \"moon\"\n", wantErr: []string{`environment "moon" is not defined`}},
		{name: "bad ports_on", toml: "[environments.web]\ndriver = \"container\"\n[environments.web.container]\nports_on = \"roof\"\n", wantErr: []string{"environments.web.container.ports_on", "roof", "proxy, anchor or container"}},
		{name: "bad driver", toml: "[environments.web]\ndriver = \"ftp\"\n", wantErr: []string{"environments.web.driver", "ftp"}},
		{name: "a file's environment table overlays the built-in one key by key", toml: "[environments.prod]\n[environments.prod.kube]\nnamespace = \"shop\"\n",
			check: func(t *testing.T, s Settings) {
				prod := s.Environments["prod"]
				assert.True(t, prod.Manual, "prod keeps manual")
				assert.True(t, prod.Protected, "prod keeps protected")
				assert.Equal(t, DriverKube, prod.Driver)
				assert.Equal(t, "shop", prod.Kube.Namespace)
				assert.Equal(t, "prod", prod.Kube.Deployment)
				assert.Contains(t, s.Environments, "web", "the other built-ins stay")
			}},
		{name: "a file switches a built-in gate off explicitly", toml: "[environments.prod]\nmanual = false\n",
			check: func(t *testing.T, s Settings) {
				assert.False(t, s.Environments["prod"].Manual)
				assert.True(t, s.Environments["prod"].Protected)
			}},
		{name: "flows replace the defaults as a whole, never by position", toml: "[[flows]]\nname = \"feature\"\nbranch = \"feature/.*\"\nimage_tag = \"dev\"\n",
			check: func(t *testing.T, s Settings) {
				require.Len(t, s.Flows, 1)
				assert.Equal(t, "", s.Flows[0].Environment, "no environment inherited from the first default flow")
				assert.Empty(t, s.Flows[0].Candidates)
			}},
		{name: "stages gain the file's keys", toml: "[stages]\nship = \"deploy\"\n",
			check: func(t *testing.T, s Settings) {
				assert.Equal(t, ActionDeploy, s.Stages["ship"])
				assert.Equal(t, ActionRelease, s.Stages["release"], "the built-in ones stay")
			}},
		{name: "bad ports", toml: "[environments.web]\ndriver = \"container\"\n[environments.web.container]\nports = [\"6000:5000:x\"]\n",
			wantErr: []string{"berth.toml:4: environments.web.container.ports:"}},
		{name: "bad restart policy", toml: "[environments.web]\n[environments.web.container]\n\nrestart = \"sometimes\"\n",
			wantErr: []string{`berth.toml:4: environments.web.container.restart: "sometimes" is not a restart policy`}},
		{name: "negative duration", toml: "[environments.web]\n[environments.web.container]\nhealth_timeout = \"-1s\"\n",
			wantErr: []string{"berth.toml:3: environments.web.container.health_timeout: must not be negative"}},
		{name: "zero lock timeout", toml: "[environments.web]\nlock_timeout = \"0s\"\n", check: func(t *testing.T, s Settings) {
			assert.Equal(t, 10*time.Minute, s.Environments["web"].LockTimeout.D(), "0 is the default")
		}},
		{name: "a pattern with refs/ never matches", toml: "[[flows]]\nname = \"m\"\nbranch = \"refs/heads/main\"\nimage_tag = \"latest\"\n",
			wantErr: []string{`berth.toml:3: flows[0].branch: flow "m": pattern "refs/heads/main" never matches: GitLab names refs without refs/heads/`}},
		{name: "a pattern that needs a character refs cannot have", toml: "[[flows]]\nname = \"a\"\nbranch = \"main\"\nimage_tag = \"x\"\n[[flows]]\nname = \"b\"\ntag = \"v1 beta\"\nimage_tag = \"x\"\n",
			wantErr: []string{`berth.toml:7: flows[1].tag: flow "b": pattern "v1 beta" never matches: a git ref name cannot contain " "`}},
		{name: "a pattern with $ before characters", toml: "[[flows]]\nname = \"a\"\nbranch = \"main$x\"\nimage_tag = \"x\"\n",
			wantErr: []string{`pattern "main$x" matches nothing`}},
		{name: "patterns that can match", toml: "[[flows]]\nname = \"a\"\nbranch = \"(feature|fix)/[a-z0-9._-]+\"\nimage_tag = \"x\"\n[[flows]]\nname = \"b\"\ntag = \"^v\\\\d+(\\\\.\\\\d+)*$\"\nimage_tag = \"x\"\n"},
		{name: "flows replace the defaults, environments get defaults", toml: "[[flows]]\nname = \"all\"\nbranch = \".*\"\nimage_tag = \"{ref}\"\nenvironment = \"web\"\n[environments.web]\ndriver = \"container\"\n[environments.web.container]\nports = [\"127.0.0.1:6000:5000\"]\n",
			check: func(t *testing.T, s Settings) {
				require.Len(t, s.Flows, 1)
				web := s.Environments["web"]
				assert.Equal(t, "web", web.Container.Name)
				assert.Equal(t, 2, web.Container.Keep)
				assert.Equal(t, PortsOnProxy, web.Container.PortsOn)
				assert.Equal(t, 10*time.Minute, web.LockTimeout.D())
				assert.Equal(t, "deploy", s.Stages["deploy"])
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Defaults()
			err := Decode("berth.toml", []byte(tt.toml), &s)
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				if tt.check != nil {
					tt.check(t, s)
				}
				return
			}
			require.Error(t, err)
			for _, w := range tt.wantErr {
				assert.Contains(t, err.Error(), w)
			}
			if tt.name == "unknown table is reported once" {
				assert.NotContains(t, err.Error(), "jobs.foo")
			}
		})
	}
}

func TestLocate(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "berth.toml")
	require.NoError(t, os.WriteFile(file, []byte("log_level = \"info\"\n"), 0o644))
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	src, err := Locate(file, env(map[string]string{"BERTH_CONFIG": "/nope"}))
	require.NoError(t, err)
	assert.Equal(t, Source{Path: file, Reason: "--config"}, src, "the flag wins over the environment")

	src, err = Locate("", env(map[string]string{"BERTH_CONFIG": file}))
	require.NoError(t, err)
	assert.Equal(t, "BERTH_CONFIG", src.Reason)

	_, err = Locate(filepath.Join(dir, "missing.toml"), env(nil))
	assert.ErrorContains(t, err, "missing.toml (from --config)")

	s, _, err := Load(file, env(nil))
	require.NoError(t, err)
	assert.Equal(t, "info", s.LogLevel)
}

func TestParseVolume(t *testing.T) {
	v, err := ParseVolume("/srv/data:/data:ro")
	require.NoError(t, err)
	assert.Equal(t, Volume{Host: "/srv/data", Container: "/data", ReadOnly: true}, v)
	for _, bad := range []string{"/a", "a:/b", "/a:/b:rx", "/a:/b:ro:x"} {
		_, err := ParseVolume(bad)
		assert.Error(t, err, bad)
	}
}

func TestAnnotateSaysWhereEachValueComesFrom(t *testing.T) {
	file := "log_level = \"info\"\n[environments.prod.kube]\nnamespace = \"shop\"\n[build]\nargs = { X = \"1\" }\n"
	encoded := "log_level = \"info\"\nlog_file = \"\"\n[build]\n  [build.args]\n    X = \"1\"\n[environments.prod]\n  manual = true\n  [environments.prod.kube]\n    namespace = \"shop\"\n    deployment = \"prod\"\n"
	got := Annotate(encoded, "b.toml", []byte(file))
	for _, want := range []string{
		`log_level = "info"  # b.toml:1`, `log_file = ""  # default`, `X = "1"  # b.toml:5`,
		`manual = true  # default`, `namespace = "shop"  # b.toml:3`, `deployment = "prod"  # default`,
	} {
		assert.Contains(t, got, want)
	}
}

func TestProxySettings(t *testing.T) {
	tests := []struct {
		name    string
		toml    string
		wantErr []string
	}{
		{"the defaults", "", nil},
		{"replicas behind the proxy", "[environments.web.container]\nreplicas = 3\nhosts = [\"app.example.com\", \"*.example.org\"]\ntls = \"internal\"\n", nil},
		{"replicas without the proxy", "[environments.web.container]\nreplicas = 2\nports_on = \"anchor\"\n", []string{"environments.web.container.replicas", `ports_on = "proxy"`}},
		{"hosts without the proxy", "[environments.web.container]\nhosts = [\"a.example\"]\nports_on = \"container\"\n", []string{"environments.web.container.hosts"}},
		{"a bad host", "[environments.web.container]\nhosts = [\"http://a.example/\"]\n", []string{"is not a host name"}},
		{"a bad tls", "[environments.web.container]\ntls = \"maybe\"\n", []string{"environments.web.container.tls", "acme, internal or off"}},
		{"no replica", "[environments.web.container]\nreplicas = -1\n", []string{"must be 1 or more"}},
		{"a bad proxy port", "[proxy]\nhttps_port = 70000\n", []string{"proxy.https_port"}},
		{"no proxy image", "[proxy]\nimage = \"\"\n", []string{"proxy.image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Defaults()
			err := Decode("berth.toml", []byte(tt.toml), &s)
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				assert.Equal(t, PortsOnProxy, s.Environments["web"].Container.PortsOn)
				assert.True(t, s.Proxy.Manage)
				assert.Equal(t, "berth-proxy", s.Proxy.Name)
				return
			}
			require.Error(t, err)
			for _, w := range tt.wantErr {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}
