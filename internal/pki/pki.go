// Package pki makes a small certificate authority and issues server and
// client certificates from it (ECDSA P-256), PEM-encoded: for halo's tests
// today, and for operators' certificates later.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// DefaultValidity is how long a certificate is valid unless told otherwise.
const DefaultValidity = 365 * 24 * time.Hour

// CA is a certificate authority: its certificate and key.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// CertPEM is Cert, PEM-encoded.
	CertPEM []byte
	// key signs: ECDSA from NewCA; ECDSA, RSA or Ed25519 from LoadCA.
	key crypto.Signer
}

// NewCA creates a self-signed CA valid for validity (zero: 10 years).
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = 10 * DefaultValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	return &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}, nil
}

// Pool returns a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Request describes a certificate to issue.
type Request struct {
	// CommonName is the subject's CN.
	CommonName string
	// DNSNames, IPs and URIs are the subject alternative names.
	DNSNames []string
	IPs      []net.IP
	URIs     []*url.URL
	// Server and Client select the extended key usages (at least one).
	Server, Client bool
	// NotBefore and NotAfter bound validity. Zero: from 5 minutes ago, for
	// DefaultValidity.
	NotBefore, NotAfter time.Time
}

// Issued is an issued certificate and its key, PEM-encoded.
type Issued struct {
	CertPEM, KeyPEM []byte
}

// Issue signs a new key's certificate as r describes.
func (ca *CA) Issue(r Request) (*Issued, error) {
	if !r.Server && !r.Client {
		return nil, errors.New("pki: a certificate must be for a server, a client or both")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	if r.NotBefore.IsZero() {
		r.NotBefore = time.Now().Add(-5 * time.Minute)
	}
	if r.NotAfter.IsZero() {
		r.NotAfter = r.NotBefore.Add(DefaultValidity)
	}
	var usage []x509.ExtKeyUsage
	if r.Server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: r.CommonName},
		NotBefore:    r.NotBefore,
		NotAfter:     r.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     r.DNSNames,
		IPAddresses:  r.IPs,
		URIs:         r.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	return &Issued{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}),
	}, nil
}

// WriteFiles writes the certificate to dir/name.crt and the key to
// dir/name.key (mode 0600) and returns their paths.
func (i *Issued) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, i.CertPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("pki: %w", err)
	}
	if err := os.WriteFile(keyFile, i.KeyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("pki: %w", err)
	}
	return certFile, keyFile, nil
}

// WriteCertFile writes the CA certificate to dir/name.crt and returns its
// path.
func (ca *CA) WriteCertFile(dir, name string) (string, error) {
	p := filepath.Join(dir, name+".crt")
	if err := os.WriteFile(p, ca.CertPEM, 0o644); err != nil { //nolint:gosec // a CA certificate is public: every client reads it
		return "", fmt.Errorf("pki: %w", err)
	}
	return p, nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n, nil
}
