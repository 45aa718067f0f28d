package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// The commands of `berth proxy ...`, which berth runs (through the Engine
// API, so over ssh:// too) in NAME-ctl, the container of berth's own
// binary in the proxy's network namespace: Caddy's admin API answers on
// localhost there and nowhere else, and the apps' containers are reachable
// by their aliases on the proxy's network, as Caddy reaches them.
const (
	CtlApply   = "apply"   // [TIMEOUT ADDR...], stdin: a Site; puts it into Caddy's config, then waits as drained does
	CtlRemove  = "remove"  // ENV: takes its site out
	CtlDrained = "drained" // TIMEOUT ADDR...: waits until Caddy has no request in flight to them
	CtlProbe   = "probe"   // TIMEOUT URL [any]: waits until the URL answers 2xx or 3xx (any: below 500)
	CtlReady   = "ready"   // TIMEOUT: waits until the admin API answers
	CtlSites   = "sites"   // lists the environments with a site
)

// StillInFlight starts the line `apply` prints when the drain it waited
// for did not end in time.
const StillInFlight = "still in flight: "

// AdminURL is Caddy's admin API in the proxy's network namespace.
const AdminURL = "http://localhost:2019"

// Ctl runs one command against the admin API at admin; its output goes to
// out, its errors say what went wrong for the job log.
func Ctl(ctx context.Context, admin string, args []string, stdin io.Reader, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: berth proxy apply|remove|drained|probe|ready|sites")
	}
	c := &http.Client{Timeout: 30 * time.Second}
	switch cmd, rest := args[0], args[1:]; cmd {
	case CtlApply:
		var site Site
		if err := json.NewDecoder(stdin).Decode(&site); err != nil {
			return fmt.Errorf("read the site on stdin: %w", err)
		}
		if err := update(ctx, c, admin, func(cfg map[string]any) error { return Apply(cfg, site) }); err != nil {
			return err
		}
		if len(rest) == 0 {
			return nil
		}
		timeout, err := durationArg(rest)
		if err != nil {
			return err
		}
		// the switch is made: requests still in flight are a warning
		if err := drained(ctx, c, admin, timeout, rest[1:]); err != nil {
			fmt.Fprintf(out, "%s%v\n", StillInFlight, err)
		}
		return nil
	case CtlRemove:
		if len(rest) != 1 {
			return errors.New("usage: berth proxy remove ENV")
		}
		return update(ctx, c, admin, func(cfg map[string]any) error { return Apply(cfg, Site{Env: rest[0]}) })
	case CtlDrained:
		timeout, err := durationArg(rest)
		if err != nil {
			return err
		}
		return drained(ctx, c, admin, timeout, rest[1:])
	case CtlProbe:
		timeout, err := durationArg(rest)
		if err != nil || len(rest) < 2 {
			return errors.New("usage: berth proxy probe TIMEOUT URL [any]")
		}
		return probe(ctx, c, timeout, rest[1], len(rest) > 2 && rest[2] == "any")
	case CtlReady:
		timeout, err := durationArg(rest)
		if err != nil {
			return err
		}
		return until(ctx, timeout, func() error { _, _, err := getConfig(ctx, c, admin); return err })
	case CtlSites:
		cfg, _, err := getConfig(ctx, c, admin)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, strings.Join(Sites(cfg), "\n"))
		return nil
	default:
		return fmt.Errorf("unknown proxy command %q", cmd)
	}
}

func durationArg(args []string) (time.Duration, error) {
	if len(args) == 0 {
		return 0, errors.New("missing timeout")
	}
	return time.ParseDuration(args[0])
}

// getConfig reads the whole config and its ETag.
func getConfig(ctx context.Context, c *http.Client, admin string) (map[string]any, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/config/", nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("Caddy's admin API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body) // the ETag is a trailer: read to the end first
	if err != nil {
		return nil, "", fmt.Errorf("Caddy's admin API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("Caddy's admin API: GET /config/: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	cfg, err := Decode(b)
	etag := resp.Trailer.Get("Etag")
	if etag == "" {
		etag = resp.Header.Get("Etag")
	}
	return cfg, etag, err
}

// update changes the config in one step: read it, change it, write it
// back if nobody wrote it meanwhile (If-Match), else again.
func update(ctx context.Context, c *http.Client, admin string, change func(map[string]any) error) error {
	for attempt := 0; ; attempt++ {
		cfg, etag, err := getConfig(ctx, c, admin)
		if err != nil {
			return err
		}
		if err := change(cfg); err != nil {
			return err
		}
		body, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, admin+"/config/", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if etag != "" {
			req.Header.Set("If-Match", etag)
		}
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("Caddy's admin API: %w", err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return nil
		case resp.StatusCode == http.StatusPreconditionFailed && attempt < 20:
			continue // another environment's switch came first
		default:
			return fmt.Errorf("Caddy refused the config: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
		}
	}
}

// drained waits until Caddy counts no request in flight to addrs.
func drained(ctx context.Context, c *http.Client, admin string, timeout time.Duration, addrs []string) error {
	return until(ctx, timeout, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/reverse_proxy/upstreams", nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var ups []struct {
			Address     string `json:"address"`
			NumRequests int    `json:"num_requests"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&ups); err != nil {
			return err
		}
		for _, u := range ups {
			for _, a := range addrs {
				if u.Address == a && u.NumRequests > 0 {
					return fmt.Errorf("%d request(s) in flight to %s", u.NumRequests, a)
				}
			}
		}
		return nil
	})
}

// probe waits until url answers: 2xx or 3xx, or with any, anything below
// 500 (an app with no health endpoint, up).
func probe(ctx context.Context, c *http.Client, timeout time.Duration, url string, any bool) error {
	c = &http.Client{Timeout: 2 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return until(ctx, timeout, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 400 || (any && resp.StatusCode < 500) {
			return nil
		}
		return fmt.Errorf("%s answered %s", url, resp.Status)
	})
}

// until retries f every 25 ms until it succeeds or timeout passes; the
// last error says why not. A new replica's health is asked this way: the
// sooner it is seen healthy, the sooner traffic moves.
func until(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}
