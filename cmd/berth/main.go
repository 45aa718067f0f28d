// Command berth is a GitLab Runner custom executor that runs jobs in
// containers of the job's image.
//
//	berth [--config FILE] config|prepare|run SCRIPT STAGE|cleanup
//	berth [--config FILE] check|sweep|version
//
// Every failure is mapped to an exit code here, and only here: the runner's
// BUILD_FAILURE_EXIT_CODE for the job's own fault, SYSTEM_FAILURE_EXIT_CODE
// for the host's.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/berthci/berth/executor"
	"github.com/berthci/berth/executor/failure"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `usage: berth [--config FILE] COMMAND

Runner protocol (called by gitlab-runner's custom executor):
  config                 print the executor's JSON configuration
  prepare                create the job's network, services and container
  run SCRIPT STAGE       run one stage of the job
  cleanup                remove everything the job created

Operator commands:
  check                  validate berth.toml and print the effective settings
  sweep [--older-than D] [--project P] [--dry-run]
                         remove what crashed jobs left behind
  spares                 make the native helpers' spare network namespaces
                         (job.helper_spares) and remove used ones
  history ENV            list an environment's deployments
  rollback ENV [--to TAG|DIGEST]
                         restore the previous version (or the given one)
  exec [--ref BRANCH | --tag TAG] [--list] [--working-tree] [--jobs N]
       [--var KEY=VALUE]... [--manual] [JOB...]
                         run jobs of .gitlab-ci.yml here, as the runner would
  version                print berth's version
  anchor                 hold an environment's ports (run by its NAME-net container)
  helper SOCKET DIR      serve a job's stages (run by its helper container)
  proxy ...              change the environments' proxy (run in its NAME-ctl container)
  archive pack|unpack    berth exec's artifacts and caches (run in a job's helper container)

The config file is --config, else $BERTH_CONFIG, else /etc/gitlab-runner/berth.toml,
else built-in defaults.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	codes := failure.ExitCodesOf(os.Getenv(executor.EnvBuildFailureExitCode), os.Getenv(executor.EnvSystemFailureExitCode))
	fs := flag.NewFlagSet("berth", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	configPath := fs.String("config", "", "berth.toml to use")
	if err := fs.Parse(args); err != nil {
		return codes.System
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return codes.System
	}
	// --config may follow the command too (berth check --config FILE): it
	// is never left for a command to ignore, which would read the defaults
	cmdArgs, later, err := extractConfig(fs.Args()[1:])
	if err != nil {
		fmt.Fprintf(stderr, "berth: %v\n", err)
		return codes.System
	}
	if later != "" {
		if *configPath != "" && *configPath != later {
			fmt.Fprintf(stderr, "berth: --config is given twice (%s and %s): give it once\n", *configPath, later)
			return codes.System
		}
		*configPath = later
	}

	// SIGTERM (a cancelled job) and SIGINT cancel ctx; every engine call
	// takes it.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	app := &app{stdout: stdout, stderr: stderr, configPath: *configPath, getenv: os.Getenv}
	err = app.dispatch(ctx, fs.Arg(0), cmdArgs)
	if err != nil {
		fmt.Fprintf(stderr, "berth: %s\n", app.redact(err.Error()))
	}
	return codes.For(err)
}

// extractConfig takes --config FILE (or --config=FILE, -config) out of a
// command's arguments.
func extractConfig(args []string) (rest []string, config string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		var v string
		switch {
		case a == "--config" || a == "-config":
			if i+1 >= len(args) {
				return nil, "", fmt.Errorf("%s needs a file", a)
			}
			v = args[i+1]
			i++
		case strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "-config="):
			v = a[strings.Index(a, "=")+1:]
		default:
			rest = append(rest, a)
			continue
		}
		if v == "" {
			return nil, "", fmt.Errorf("%s needs a file", a)
		}
		if config != "" && config != v {
			return nil, "", fmt.Errorf("--config is given twice (%s and %s): give it once", config, v)
		}
		config = v
	}
	return rest, config, nil
}
