package health_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halolb/halo/server/health"
	"github.com/halolb/halo/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a real TLS HTTP server answering path with code and body.
func server(t *testing.T, code int, body string) *httptest.Server {
	t.Helper()
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth := r.Header.Get("Authorization"); code == http.StatusUnauthorized && auth == "Bearer good" {
			w.Write([]byte("ok"))
			return
		}
		w.WriteHeader(code)
		w.Write([]byte(body))
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
	c := health.NewClient(&tls.Config{InsecureSkipVerify: true})
	return c
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		kind       health.Kind
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
		{name: "etcd healthy", kind: health.Etcd, code: 200, body: `{"health":"true","reason":""}`, ok: true},
		{name: "etcd unhealthy", kind: health.Etcd, code: 200, body: `{"health":"false","reason":"RAFT NO LEADER"}`, errContain: "RAFT NO LEADER"},
		{name: "etcd not json", kind: health.Etcd, code: 200, body: "ok", errContain: "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := server(t, tc.code, tc.body)
			r := health.Probe(ctx, insecure(), health.Target{Kind: tc.kind, URL: s.URL + "/readyz", Token: tc.token, Credentials: tc.creds}, time.Second)
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

func TestProbeHungServerTimesOut(t *testing.T) {
	url := hung(t)
	start := time.Now()
	r := health.Probe(context.Background(), insecure(), health.Target{URL: url}, 200*time.Millisecond)
	if r.OK || r.Err == nil || !strings.Contains(r.Err.Error(), "timeout") {
		t.Fatalf("hung server: %+v", r)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the probe took %v with a 200ms timeout", d)
	}
}

func TestProbeVerifiesAgainstCA(t *testing.T) {
	s := server(t, 200, "ok")
	// A client that trusts nothing: the httptest certificate is refused.
	r := health.Probe(context.Background(), health.NewClient(&tls.Config{RootCAs: nil, ServerName: "example.com"}), health.Target{URL: s.URL + "/readyz"}, time.Second)
	if r.OK {
		t.Fatal("an unverifiable certificate passed")
	}
	pool := s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	r = health.Probe(context.Background(), health.NewClient(&tls.Config{RootCAs: pool}), health.Target{URL: s.URL + "/readyz"}, time.Second)
	if !r.OK {
		t.Fatalf("with the CA: %v", r.Err)
	}
}

func TestTrackerRiseAndFall(t *testing.T) {
	now := time.Unix(100, 0)
	tr := health.NewTracker(2, 2, health.Unknown, now)
	good, bad := health.Result{OK: true}, health.Result{}
	steps := []struct {
		r       health.Result
		changed bool
		state   health.State
	}{
		{good, false, health.Unknown},
		{good, true, health.Healthy},
		{bad, false, health.Healthy}, // one lost probe flips nothing
		{good, false, health.Healthy},
		{bad, false, health.Healthy},
		{bad, true, health.Unhealthy},
		{bad, false, health.Unhealthy},
		{good, false, health.Unhealthy},
		{good, true, health.Healthy},
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
	tr := health.NewTracker(2, 2, health.Unhealthy, time.Unix(1, 0))
	if tr.Observe(health.Result{}, time.Unix(2, 0)) {
		t.Error("a failed probe changed an unhealthy backend")
	}
	tr.Observe(health.Result{OK: true}, time.Unix(3, 0))
	if !tr.Observe(health.Result{OK: true}, time.Unix(4, 0)) {
		t.Error("rise good probes did not make it healthy")
	}
}
