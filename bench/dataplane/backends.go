package main

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
)

// The backends are three "apiservers" on 127.0.0.1, in a child process of
// their own (this binary re-executed with childEnv set) so that their CPU is
// not mixed up with the load generator's and their sockets do not count
// against this process's open-files limit. Every backend port speaks four
// protocols, told apart by the connection's first byte, so that one set of
// backends (one proxy configuration) serves every phase:
//
//	0x16 (a TLS ClientHello): TLS 1.3 with the bench's certificate; the
//	     client sends msgSize bytes, the backend answers msgSize bytes, then
//	     waits for the client to close.
//	'D' + 8-byte big-endian n: the backend sends n bytes, then closes (bulk,
//	     in the direction apiserver responses flow).
//	'E': echo msgSize-byte messages until the client closes (keep-alive
//	     requests, and the held idle connections).
const (
	childEnv = "HALO_BENCH_DATAPLANE_BACKENDS" // the directory with backend.crt and backend.key
	msgSize  = 100
)

// runBackendChild is the child's main: it serves three listeners, prints
// "ports P1,P2,P3" and serves until its standard input closes (the parent
// exited or stopped it).
func runBackendChild(dir string) error {
	if _, err := proxyproc.RaiseNoFile(); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "backend.crt"), filepath.Join(dir, "backend.key"))
	if err != nil {
		return fmt.Errorf("backend certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	bulk := make([]byte, 1<<20)
	var ports []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("backend listen: %w", err)
		}
		ports = append(ports, fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off
					continue
				}
				go serveBackendConn(c, cfg, bulk)
			}
		}()
	}
	fmt.Printf("ports %s\n", strings.Join(ports, ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// prefixConn is a net.Conn whose first bytes were already read.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// serveBackendConn serves one connection as the package comment describes.
func serveBackendConn(c net.Conn, cfg *tls.Config, bulk []byte) {
	defer c.Close()
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return
	}
	switch first[0] {
	case 0x16:
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		tc := tls.Server(&prefixConn{Conn: c, r: io.MultiReader(strings.NewReader(string(first[:])), c)}, cfg)
		var buf [msgSize]byte
		if _, err := io.ReadFull(tc, buf[:]); err != nil {
			return
		}
		if _, err := tc.Write(buf[:]); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, tc) // until the client closes
	case 'D':
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
		for n := binary.BigEndian.Uint64(hdr[:]); n > 0; {
			k := min(n, uint64(len(bulk)))
			if _, err := c.Write(bulk[:k]); err != nil {
				return
			}
			n -= k
		}
	case 'E':
		var buf [msgSize]byte
		for {
			if _, err := io.ReadFull(c, buf[:]); err != nil {
				return
			}
			if _, err := c.Write(buf[:]); err != nil {
				return
			}
		}
	}
}

// backends is the running child process.
type backends struct {
	*proxyproc.Child
	addrs []string // 127.0.0.1:port
}

// startBackends starts the child; cpus non-nil pins it (taskset) and gives
// it one P per CPU.
func startBackends(dir string, cpus []int) (*backends, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("backends: %w", err)
	}
	argv, env := []string{exe}, []string{childEnv + "=" + dir}
	if cpus != nil {
		argv = append([]string{"taskset", "-c", cpuList(cpus)}, argv...)
		env = append(env, fmt.Sprintf("GOMAXPROCS=%d", len(cpus)))
	}
	c, line, err := proxyproc.StartChild("backends", argv, env, 10*time.Second)
	if err != nil {
		return nil, err
	}
	ports, ok := strings.CutPrefix(line, "ports ")
	if !ok {
		c.Stop()
		return nil, fmt.Errorf("backends: unexpected first line %q", line)
	}
	b := &backends{Child: c}
	for _, p := range strings.Split(ports, ",") {
		b.addrs = append(b.addrs, "127.0.0.1:"+p)
	}
	return b, nil
}

func (b *backends) pid() int { return b.Pid() }
func (b *backends) stop()    { b.Stop() }

func cpuList(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = fmt.Sprint(c)
	}
	return strings.Join(s, ",")
}
