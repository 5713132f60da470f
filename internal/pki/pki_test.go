package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/halolb/halo/internal/pki"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := pki.NewCA("halo-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://halo/cluster/prod/node/w1")
	iss, err := ca.Issue(pki.Request{CommonName: "w1", DNSNames: []string{"w1.example.com"}, IPs: []net.IP{net.ParseIP("127.0.0.1")},
		URIs: []*url.URL{id}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(iss.CertPEM, iss.KeyPEM); err != nil {
		t.Fatalf("key pair: %v", err)
	}
	b, _ := pem.Decode(iss.CertPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "w1.example.com", KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for %v: %v", usage, err)
		}
	}
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != id.String() {
		t.Errorf("URIs %v", cert.URIs)
	}
	// Another CA does not vouch for it.
	other, _ := pki.NewCA("other", 0)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other.Pool()}); err == nil {
		t.Error("verified against an unrelated CA")
	}
}

func TestIssueServerOnlyAndExpired(t *testing.T) {
	ca, _ := pki.NewCA("halo-test", time.Hour)
	iss, err := ca.Issue(pki.Request{CommonName: "s", Server: true, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(iss.CertPEM)
	cert, _ := x509.ParseCertificate(b.Bytes)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("an expired certificate verified")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: time.Now().Add(-90 * time.Minute),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a server-only certificate verified as a client")
	}
	if _, err := ca.Issue(pki.Request{CommonName: "x"}); err == nil {
		t.Error("a certificate for neither server nor client was issued")
	}
}
