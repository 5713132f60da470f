package identity

import (
	"crypto/x509"
	"net/url"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, id := range []ID{NodeID("halo.example", "prod", "worker-1.dc1"), UserID("td", "alice"), ReplicaID("td", "halo-1")} {
		got, err := Parse(id.URL())
		if err != nil || got != id {
			t.Errorf("Parse(%s) = %+v, %v", id, got, err)
		}
	}
	if s := NodeID("td", "prod", "w1").String(); s != "spiffe://td/cluster/prod/node/w1" {
		t.Errorf("node URI %s", s)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{
		"https://td/user/alice", "spiffe:///user/alice", "spiffe://td/user/", "spiffe://td/user/Alice",
		"spiffe://td/user/alice/x", "spiffe://td/cluster/prod/node", "spiffe://td/cluster/prod/nodes/w1",
		"spiffe://td:8443/user/alice", "spiffe://td/user/alice?x=1", "spiffe://td/group/admins", "spiffe://u@td/user/alice",
		"spiffe://td/cluster/../node/w1",
	} {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		if id, err := Parse(u); err == nil {
			t.Errorf("Parse(%s) = %+v, want an error", s, id)
		}
	}
}

func TestFromCertificate(t *testing.T) {
	one, _ := url.Parse("spiffe://td/user/alice")
	other, _ := url.Parse("spiffe://td/user/bob")
	web, _ := url.Parse("https://example.com")
	if id, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{web, one}}); err != nil || id != UserID("td", "alice") {
		t.Errorf("one spiffe URI: %+v, %v", id, err)
	}
	if _, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{web}}); err != ErrNone {
		t.Errorf("no spiffe URI: %v", err)
	}
	if _, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{one, other}}); err == nil {
		t.Error("two spiffe URIs accepted")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://td/user/alice", "spiffe://td/cluster/prod/node/w1", "spiffe://td/replica/r1", "spiffe://a/b/c/d/e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		id, err := Parse(u)
		if err != nil {
			return
		}
		// What parses is valid and round-trips.
		if err := id.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %+v, invalid: %v", s, id, err)
		}
		again, err := Parse(id.URL())
		if err != nil || again != id {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}
