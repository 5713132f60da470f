// Package certfile serves TLS certificates and CA bundles from PEM files
// and picks up new contents of those files without a restart, so that
// rotated certificates (cert-manager, Kubespray, `halo-server certs`) take
// effect at the next handshake.
//
// Files are looked at again at most once per MinInterval, when a handshake
// needs them; a change of size, modification time or inode (what a
// Kubernetes secret's symlink swap gives) makes them be read again. A
// rotation caught half-written (key and certificate that do not match, a
// truncated PEM) keeps the previous contents in use and is retried at the
// next look.
package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// DefaultMinInterval is how often files are looked at, at most.
const DefaultMinInterval = time.Second

// Options names the files. CertFile and KeyFile go together; CAFile is a
// bundle of trusted CA certificates. Any may be empty.
type Options struct {
	CertFile, KeyFile string
	CAFile            string
	// MinInterval bounds how often the files are stat'ed. Default
	// DefaultMinInterval.
	MinInterval time.Duration
	// Logger is told about reloads and failed reloads. Nil: discard.
	Logger *slog.Logger
}

// Source holds the current contents of the files.
type Source struct {
	o   Options
	log *slog.Logger

	mu        sync.Mutex
	checked   time.Time
	pairStamp stamp
	caStamp   stamp
	cert      *tls.Certificate
	pool      *x509.CertPool
}

// New reads the files once; an error names the bad file.
func New(o Options) (*Source, error) {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("certfile: a certificate file and a key file go together")
	}
	if o.MinInterval <= 0 {
		o.MinInterval = DefaultMinInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{o: o, log: o.Logger}
	if o.CertFile != "" {
		if err := s.loadPair(); err != nil {
			return nil, err
		}
	}
	if o.CAFile != "" {
		if err := s.loadCA(); err != nil {
			return nil, err
		}
	}
	s.checked = time.Now()
	return s, nil
}

// Certificate is the current certificate and key (nil without CertFile).
func (s *Source) Certificate() *tls.Certificate {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert
}

// Pool is the current CA pool (nil without CAFile).
func (s *Source) Pool() *x509.CertPool {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool
}

// ServerConfig is a server-side TLS configuration serving the current
// certificate; with a CAFile, every client must present a certificate
// that the current CA pool verifies.
func (s *Source) ServerConfig() *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	base.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if c := s.Certificate(); c != nil {
			return c, nil
		}
		return nil, errors.New("certfile: no server certificate")
	}
	if s.o.CAFile != "" {
		base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := base.Clone()
			c.GetConfigForClient = nil
			c.ClientAuth = tls.RequireAndVerifyClientCert
			c.ClientCAs = s.Pool()
			return c, nil
		}
	}
	return base
}

// ClientConfig is a client-side TLS configuration that presents the current
// certificate (if any) and verifies the server against the current CA pool
// (the system's roots without a CAFile). serverName, if set, is the name
// expected in the server's certificate instead of the dialled host.
func (s *Source) ClientConfig(serverName string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if s.o.CertFile != "" {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.Certificate(), nil
		}
	}
	if s.o.CAFile == "" {
		return c
	}
	// The pool changes with the file, so verification is done here, with
	// the same checks crypto/tls makes against RootCAs.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("certfile: the server sent no certificate")
		}
		opts := x509.VerifyOptions{Roots: s.Pool(), DNSName: cs.ServerName, Intermediates: x509.NewCertPool()}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("certfile: the server's certificate: %w", err)
		}
		return nil
	}
	return c
}

// refresh re-reads the files that changed, at most once per MinInterval.
func (s *Source) refresh() {
	s.mu.Lock()
	if time.Since(s.checked) < s.o.MinInterval {
		s.mu.Unlock()
		return
	}
	s.checked = time.Now()
	pairChanged := s.o.CertFile != "" && statOf(s.o.CertFile, s.o.KeyFile) != s.pairStamp
	caChanged := s.o.CAFile != "" && statOf(s.o.CAFile) != s.caStamp
	s.mu.Unlock()
	if pairChanged {
		if err := s.loadPair(); err != nil {
			s.log.Warn("rotated certificate not loaded; the previous one stays in use", "cert_file", s.o.CertFile, "key_file", s.o.KeyFile, "error", err)
		} else {
			s.log.Info("certificate reloaded", "cert_file", s.o.CertFile)
		}
	}
	if caChanged {
		if err := s.loadCA(); err != nil {
			s.log.Warn("rotated CA bundle not loaded; the previous one stays in use", "ca_file", s.o.CAFile, "error", err)
		} else {
			s.log.Info("CA bundle reloaded", "ca_file", s.o.CAFile)
		}
	}
}

func (s *Source) loadPair() error {
	st := statOf(s.o.CertFile, s.o.KeyFile)
	cert, err := tls.LoadX509KeyPair(s.o.CertFile, s.o.KeyFile)
	if err != nil {
		return fmt.Errorf("certfile: %s / %s: %w", s.o.CertFile, s.o.KeyFile, err)
	}
	s.mu.Lock()
	s.cert, s.pairStamp = &cert, st
	s.mu.Unlock()
	return nil
}

func (s *Source) loadCA() error {
	st := statOf(s.o.CAFile)
	pem, err := os.ReadFile(s.o.CAFile)
	if err != nil {
		return fmt.Errorf("certfile: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("certfile: %s holds no PEM certificate", s.o.CAFile)
	}
	s.mu.Lock()
	s.pool, s.caStamp = pool, st
	s.mu.Unlock()
	return nil
}

// stamp identifies the contents of up to two files without reading them.
type stamp [2]fileStamp

type fileStamp struct {
	size, mtime int64
	ino         uint64
	err         bool
}

func statOf(files ...string) stamp {
	var st stamp
	for i, f := range files {
		fi, err := os.Stat(f) // follows symlinks: a swapped link shows the new file
		if err != nil {
			st[i].err = true
			continue
		}
		st[i].size, st[i].mtime = fi.Size(), fi.ModTime().UnixNano()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			st[i].ino = sys.Ino
		}
	}
	return st
}
