package main

import (
	"crypto/tls"
	"net"

	"github.com/halolb/halo/internal/pki"
)

// clientTLS trusts only the bench's CA and verifies the backend's IP SAN, as
// kubelet does with its apiserver CA. No session cache: every connection is
// a full handshake. Key exchange X25519 (what kubelets built with Go before
// 1.24 use), unless pq: then Go's default, X25519MLKEM768 first, which
// costs the load generator more and moves about 2 KiB more per handshake.
func clientTLS(ca *pki.CA, pq bool) *tls.Config {
	c := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if !pq {
		c.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	return c
}

// loopbackIPs are the backend certificate's IP SANs.
func loopbackIPs() []net.IP {
	return []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
}
