// Package prober probes backends (every master's kube-apiserver and every
// etcd member) at the HTTP level and turns probe results into health
// states with rise and fall, as HAProxy does, so that a hung apiserver
// (TCP connects, HTTP never answers) is caught by the probe's timeout.
package prober

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Kind is what a backend is, which decides how its answer is judged.
type Kind int

// The kinds of backends.
const (
	// APIServer is a kube-apiserver: GET /readyz must answer 200 "ok".
	APIServer Kind = iota
	// Etcd is an etcd member: GET /health must answer 200 {"health":"true"}.
	Etcd
)

// Target is one backend to probe.
type Target struct {
	// Kind decides how the answer is judged.
	Kind Kind
	// URL is the full URL probed, e.g. https://10.0.0.1:6443/readyz.
	URL string
	// Token is a bearer token sent with the probe ("" for none).
	Token string
	// UserAgent names the prober in the backend's logs (the replica).
	UserAgent string
	// Credentials tells whether the probe authenticates (a client
	// certificate in the client's TLS configuration, or Token). Without
	// credentials a 401 or 403 answered in time counts as alive but
	// unverified: the server is responsive, which is what hang detection
	// needs, but its readiness is unknown.
	Credentials bool
}

// Result is the outcome of one probe.
type Result struct {
	// OK is true when the backend counts as alive.
	OK bool
	// Unverified is true when it counts as alive only because it answered
	// 401/403 to a probe without credentials.
	Unverified bool
	// Latency is how long the probe took.
	Latency time.Duration
	// Err says why the probe failed (nil when OK).
	Err error
}

// maxBody bounds what a probe reads of an answer.
const maxBody = 4 << 10

// Probe probes t once with client, within timeout.
func Probe(ctx context.Context, client *http.Client, t Target, timeout time.Duration) Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	res := probe(ctx, client, t)
	res.Latency = time.Since(start)
	return res
}

func probe(ctx context.Context, client *http.Client, t Target) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return Result{Err: fmt.Errorf("probe %s: %w", t.URL, err)}
	}
	if t.Token != "" {
		req.Header.Set("Authorization", "Bearer "+t.Token)
	}
	if t.UserAgent != "" {
		req.Header.Set("User-Agent", t.UserAgent)
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return Result{Err: fmt.Errorf("probe %s: no answer within the timeout", t.URL)}
		}
		return Result{Err: fmt.Errorf("probe %s: %w", t.URL, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return Result{Err: fmt.Errorf("probe %s: reading the answer: %w", t.URL, err)}
	}
	switch {
	case (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) && !t.Credentials:
		return Result{OK: true, Unverified: true}
	case resp.StatusCode != http.StatusOK:
		return Result{Err: fmt.Errorf("probe %s: %s: %s", t.URL, resp.Status, firstLine(body))}
	}
	if err := judge(t.Kind, body); err != nil {
		return Result{Err: fmt.Errorf("probe %s: %w", t.URL, err)}
	}
	return Result{OK: true}
}

// judge checks a 200 answer's body.
func judge(k Kind, body []byte) error {
	switch k {
	case Etcd:
		var h struct {
			Health string `json:"health"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(body, &h); err != nil {
			return fmt.Errorf("etcd /health answer is not JSON: %q", firstLine(body))
		}
		if h.Health != "true" {
			return fmt.Errorf("etcd reports health %q (%s)", h.Health, h.Reason)
		}
	default:
		if strings.TrimSpace(string(body)) != "ok" {
			return fmt.Errorf("answered %q, not ok", firstLine(body))
		}
	}
	return nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// NewClient returns the HTTP client probes use: no keep-alive (each probe
// opens a fresh connection, as a new client would, so a hung accept or
// handshake is caught too), no proxy from the environment, and tlsCfg.
func NewClient(tlsCfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   tlsCfg,
		DisableKeepAlives: true,
		Proxy:             nil,
		ForceAttemptHTTP2: false,
	}}
}
