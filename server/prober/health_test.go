package prober_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halolb/halo/server/prober"
	"github.com/halolb/halo/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a real TLS HTTP server answering path with code and body.
func server(t *testing.T, code int, body string) *httptest.Server {
	t.Helper()
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth := r.Header.Get("Authorization"); code == http.StatusUnauthorized && auth == "Bearer good" {
			_, _ = w.Write([]byte("ok"))
			return
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(s.Close)
	return s
}

// hung is the /readyz URL of a server that accepts TCP connections and
// never answers (a stopped apiserver whose socket the kernel still accepts
// on).
func hung(t *testing.T) string {
	return "https://" + servertest.Hung(t, "127.0.0.1:0") + "/readyz"
}

func insecure() *http.Client {
	c := prober.NewClient(&tls.Config{InsecureSkipVerify: true})
	return c
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		kind       prober.Kind
		code       int
		body       string
		creds      bool
		token      string
		ok, unver  bool
		errContain string
	}{
		{name: "ready", code: 200, body: "ok", ok: true},
		{name: "not ready", code: 500, body: "[-]etcd failed\nreadyz check failed", errContain: "500"},
		{name: "200 but not ok", code: 200, body: "[+]ping ok", errContain: "not ok"},
		{name: "401 without credentials", code: 401, body: "Unauthorized", ok: true, unver: true},
		{name: "403 without credentials", code: 403, body: "forbidden", ok: true, unver: true},
		{name: "401 with bad credentials", code: 401, body: "Unauthorized", creds: true, token: "bad", errContain: "401"},
		{name: "401 then ok with a good token", code: 401, creds: true, token: "good", ok: true},
		{name: "etcd healthy", kind: prober.Etcd, code: 200, body: `{"health":"true","reason":""}`, ok: true},
		{name: "etcd unhealthy", kind: prober.Etcd, code: 200, body: `{"health":"false","reason":"RAFT NO LEADER"}`, errContain: "RAFT NO LEADER"},
		{name: "etcd not json", kind: prober.Etcd, code: 200, body: "ok", errContain: "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := server(t, tc.code, tc.body)
			r := prober.Probe(ctx, insecure(), prober.Target{Kind: tc.kind, URL: s.URL + "/readyz", Token: tc.token, Credentials: tc.creds}, time.Second)
			if r.OK != tc.ok || r.Unverified != tc.unver {
				t.Fatalf("ok %v unverified %v (err %v), want %v %v", r.OK, r.Unverified, r.Err, tc.ok, tc.unver)
			}
			if tc.errContain != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tc.errContain)) {
				t.Errorf("error %v, want it to say %q", r.Err, tc.errContain)
			}
			if r.Latency <= 0 {
				t.Errorf("latency %v", r.Latency)
			}
		})
	}
}

// TestProbeHungServerTimesOut: a probe of a server that never answers ends
// with a timeout error; without the timeout it would wait forever, which
// the 10 s limit (a stall, not a slow machine) catches.
func TestProbeHungServerTimesOut(t *testing.T) {
	url := hung(t)
	done := make(chan prober.Result, 1)
	go func() {
		done <- prober.Probe(context.Background(), insecure(), prober.Target{URL: url}, 200*time.Millisecond)
	}()
	select {
	case r := <-done:
		if r.OK || r.Err == nil || !strings.Contains(r.Err.Error(), "timeout") {
			t.Fatalf("hung server: %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the probe of a hung server did not end within 10s with a 200ms timeout")
	}
}

func TestProbeVerifiesAgainstCA(t *testing.T) {
	s := server(t, 200, "ok")
	// A client that trusts nothing: the httptest certificate is refused.
	r := prober.Probe(context.Background(), prober.NewClient(&tls.Config{RootCAs: nil, ServerName: "example.com"}), prober.Target{URL: s.URL + "/readyz"}, time.Second)
	if r.OK {
		t.Fatal("an unverifiable certificate passed")
	}
	pool := s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	r = prober.Probe(context.Background(), prober.NewClient(&tls.Config{RootCAs: pool}), prober.Target{URL: s.URL + "/readyz"}, time.Second)
	if !r.OK {
		t.Fatalf("with the CA: %v", r.Err)
	}
}

func TestTrackerRiseAndFall(t *testing.T) {
	now := time.Unix(100, 0)
	tr := prober.NewTracker(2, 2, prober.Unknown, now)
	good, bad := prober.Result{OK: true}, prober.Result{}
	steps := []struct {
		r       prober.Result
		changed bool
		state   prober.State
	}{
		{good, false, prober.Unknown},
		{good, true, prober.Healthy},
		{bad, false, prober.Healthy}, // one lost probe flips nothing
		{good, false, prober.Healthy},
		{bad, false, prober.Healthy},
		{bad, true, prober.Unhealthy},
		{bad, false, prober.Unhealthy},
		{good, false, prober.Unhealthy},
		{good, true, prober.Healthy},
	}
	for i, s := range steps {
		now = now.Add(time.Second)
		if changed := tr.Observe(s.r, now); changed != s.changed {
			t.Fatalf("step %d: changed %v", i, changed)
		}
		st, since := tr.State()
		if st != s.state {
			t.Fatalf("step %d: state %v, want %v", i, st, s.state)
		}
		if s.changed && !since.Equal(now) {
			t.Fatalf("step %d: since %v", i, since)
		}
	}
}

func TestTrackerResumesFromStoredState(t *testing.T) {
	tr := prober.NewTracker(2, 2, prober.Unhealthy, time.Unix(1, 0))
	if tr.Observe(prober.Result{}, time.Unix(2, 0)) {
		t.Error("a failed probe changed an unhealthy backend")
	}
	tr.Observe(prober.Result{OK: true}, time.Unix(3, 0))
	if !tr.Observe(prober.Result{OK: true}, time.Unix(4, 0)) {
		t.Error("rise good probes did not make it healthy")
	}
}
