package pki_test

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halolb/halo/internal/pki"
)

// writeCA writes certPEM and keyPEM to files in a new directory and returns
// their paths.
func writeCA(t *testing.T, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// issueAndVerify issues a client certificate from ca and checks that it
// verifies against roots.
func issueAndVerify(t *testing.T, ca *pki.CA, roots *pki.CA) {
	t.Helper()
	iss, err := ca.Issue(pki.Request{CommonName: "c", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(iss.CertPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestLoadCARoundTrip(t *testing.T) {
	orig, err := pki.NewCA("halo-test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := orig.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("KeyPEM gave %q", keyPEM)
	}
	ca, err := pki.LoadCA(writeCA(t, orig.CertPEM, keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.Equal(orig.Cert) || string(ca.CertPEM) != string(orig.CertPEM) {
		t.Error("the loaded CA certificate differs")
	}
	// What the loaded CA signs, the original vouches for, and the other way.
	issueAndVerify(t, ca, orig)
	issueAndVerify(t, orig, ca)
}

// selfSigned makes a CA certificate for key, PEM-encoded.
func selfSigned(t *testing.T, key crypto.Signer, isCA bool) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "other"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		IsCA:                  isCA,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestLoadCAKeyFormats(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, typ string
		key       crypto.Signer
		der       []byte
	}{
		{"SEC 1 ECDSA", "EC PRIVATE KEY", ecKey, sec1},
		{"PKCS #1 RSA", "RSA PRIVATE KEY", rsaKey, x509.MarshalPKCS1PrivateKey(rsaKey)},
		{"PKCS #8 Ed25519", "PRIVATE KEY", edKey, edDER},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, err := pki.LoadCA(writeCA(t, selfSigned(t, tc.key, true), pem.EncodeToMemory(&pem.Block{Type: tc.typ, Bytes: tc.der})))
			if err != nil {
				t.Fatal(err)
			}
			issueAndVerify(t, ca, ca)
			if _, err := ca.KeyPEM(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestLoadCARefuses(t *testing.T) {
	ca, _ := pki.NewCA("halo-test", time.Hour)
	keyPEM, _ := ca.KeyPEM()
	other, _ := pki.NewCA("other", time.Hour)
	otherKey, _ := other.KeyPEM()
	leaf, _ := ca.Issue(pki.Request{CommonName: "leaf", Client: true})
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	notCA := selfSigned(t, ecKey, false)
	ecKeyDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	x25519, _ := ecdh.X25519().GenerateKey(rand.Reader)
	x25519DER, _ := x509.MarshalPKCS8PrivateKey(x25519)
	for _, tc := range []struct {
		name            string
		certPEM, keyPEM []byte
		want            string
	}{
		{"mismatched key", ca.CertPEM, otherKey, "does not match"},
		{"a leaf certificate", leaf.CertPEM, leaf.KeyPEM, "not a CA"},
		{"a self-signed non-CA", notCA, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecKeyDER}), "not a CA"},
		{"no certificate", []byte("junk"), keyPEM, "no CERTIFICATE"},
		{"a key as certificate", keyPEM, keyPEM, "no CERTIFICATE"},
		{"no key", ca.CertPEM, []byte("junk"), "no PEM block"},
		{"encrypted key", ca.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), "unsupported"},
		{"corrupt key", ca.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "CA key"},
		{"key that cannot sign", ca.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: x25519DER}), "cannot sign"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certFile, keyFile := writeCA(t, tc.certPEM, tc.keyPEM)
			_, err := pki.LoadCA(certFile, keyFile)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), certFile) {
				t.Errorf("LoadCA: %v; want an error naming %s and containing %q", err, certFile, tc.want)
			}
		})
	}
}

func TestLoadCAMissingFiles(t *testing.T) {
	dir := t.TempDir()
	ca, _ := pki.NewCA("halo-test", time.Hour)
	keyPEM, _ := ca.KeyPEM()
	certFile, keyFile := writeCA(t, ca.CertPEM, keyPEM)
	for _, files := range [][2]string{{filepath.Join(dir, "none.crt"), keyFile}, {certFile, filepath.Join(dir, "none.key")}} {
		if _, err := pki.LoadCA(files[0], files[1]); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("LoadCA(%s, %s): %v; want fs.ErrNotExist", files[0], files[1], err)
		}
	}
}
