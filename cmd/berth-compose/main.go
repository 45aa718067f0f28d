// Command berth-compose brings a compose project up for berth's compose
// driver: a compose.Request as JSON on stdin, a compose.Result as JSON on
// stdout. berth runs it; it is a binary of its own so that only compose
// deploys pay for docker compose's start-up (see package compose).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/berthci/berth/compose"
	"github.com/berthci/berth/compose/apply"
	"github.com/berthci/berth/executor/engine"
	"github.com/berthci/berth/stages/driver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	res, err := run(ctx)
	if err != nil {
		res = compose.Result{Answer: driver.AnswerOf(err)}
	}
	if err := driver.Reply(os.Stdout, res); err != nil {
		fmt.Fprintf(os.Stderr, "berth-compose: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (compose.Result, error) {
	var req compose.Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return compose.Result{}, fmt.Errorf("read the request on stdin (berth-compose is run by berth): %w", err)
	}
	c, err := engine.NewClient(req.DockerHost, req.SSHOptions...)
	if err != nil {
		return compose.Result{}, err
	}
	svc, err := apply.New(c, slices.Contains(req.Allow, "registry_logins"))
	if err != nil {
		return compose.Result{}, fmt.Errorf("set up docker compose: %w", err)
	}
	return svc.Apply(ctx, req)
}
