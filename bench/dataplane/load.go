package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// target is where the load generator connects: a proxy's one address, or
// (direct) the backends in turn.
type target struct {
	addrs []string
	next  atomic.Uint32
}

func (t *target) pick() string {
	return t.addrs[int(t.next.Add(1)-1)%len(t.addrs)]
}

var dialer = net.Dialer{Timeout: 5 * time.Second}

// dialEcho opens an echo connection to addr and does one round trip, so that
// the proxy has connected through to a backend and relayed both ways.
func dialEcho(addr string) (net.Conn, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	var buf [1 + msgSize]byte
	buf[0] = 'E'
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write(buf[:])
	if err == nil {
		_, err = io.ReadFull(c, buf[:msgSize])
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("echo through %s: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// echoOnce opens, uses and closes one echo connection.
func echoOnce(addr string) error {
	c, err := dialEcho(addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// runBulk downloads n bytes over one connection ('D' request) and returns how
// long the bytes took from the request's send to the last one's arrival.
func runBulk(ctx context.Context, addr string, n int64) (time.Duration, error) {
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("bulk: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	var req [9]byte
	req[0] = 'D'
	binary.BigEndian.PutUint64(req[1:], uint64(n))
	start := time.Now()
	if _, err := c.Write(req[:]); err != nil {
		return 0, fmt.Errorf("bulk: %w", err)
	}
	buf := make([]byte, 1<<20)
	var got int64
	for got < n {
		k, err := c.Read(buf)
		got += int64(k)
		if err != nil {
			if errors.Is(err, io.EOF) && got == n {
				break
			}
			return 0, fmt.Errorf("bulk: after %d of %d bytes: %w", got, n, err)
		}
	}
	return time.Since(start), nil
}

// kaResult is the outcome of the keep-alive phase.
type kaResult struct {
	requests int
	elapsed  time.Duration
	p50, p99 time.Duration
}

// runKeepAlive runs conns echo connections, each sending a msgSize-byte
// request and reading the msgSize-byte answer in a loop, for d after a
// warm-up. begin is called just before the timed window, mid halfway through
// it, end just after it.
func runKeepAlive(ctx context.Context, tgt *target, conns int, d time.Duration, begin, mid, end func()) (kaResult, error) {
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := dialEcho(tgt.pick())
		if err != nil {
			return kaResult{}, fmt.Errorf("keep-alive: %w", err)
		}
		_ = c.SetDeadline(time.Now().Add(d + time.Minute))
		cs = append(cs, c)
	}
	const warmup = 200
	maxPerConn := 20_000_000 / conns // bounds the loop whatever the duration
	var (
		stop  atomic.Bool
		ready sync.WaitGroup
		wg    sync.WaitGroup
		start = make(chan struct{})
		lats  = make([][]time.Duration, conns)
		errs  = make([]error, conns)
	)
	ready.Add(conns)
	for i, c := range cs {
		wg.Go(func() {
			var req, resp [msgSize]byte
			rt := func() error {
				if _, err := c.Write(req[:]); err != nil {
					return err
				}
				_, err := io.ReadFull(c, resp[:])
				return err
			}
			var err error
			for range warmup {
				if err = rt(); err != nil {
					break
				}
			}
			ready.Done()
			if err != nil {
				errs[i] = err
				return
			}
			<-start
			lat := make([]time.Duration, 0, 1<<16)
			t0 := time.Now()
			for range maxPerConn {
				if stop.Load() {
					break
				}
				if err := rt(); err != nil {
					errs[i] = err
					break
				}
				t1 := time.Now()
				lat = append(lat, t1.Sub(t0))
				t0 = t1
			}
			lats[i] = lat
		})
	}
	ready.Wait()
	begin()
	t0 := time.Now()
	close(start)
	sleepCtx(ctx, d/2)
	mid()
	sleepCtx(ctx, d-d/2)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(t0)
	end()
	if err := errors.Join(errs...); err != nil {
		return kaResult{}, fmt.Errorf("keep-alive: %w", err)
	}
	if ctx.Err() != nil {
		return kaResult{}, ctx.Err()
	}
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return kaResult{}, errors.New("keep-alive: no requests")
	}
	slices.Sort(all)
	return kaResult{requests: len(all), elapsed: elapsed, p50: percentile(all, 0.50), p99: percentile(all, 0.99)}, nil
}

// percentile returns the p-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// runNewConns has workers open TLS connections in a loop for d: dial,
// handshake (full, no resumption), one msgSize request and answer, close.
// It returns the completed connections and the time they took; begin and end
// are called around the timed window.
func runNewConns(ctx context.Context, tgt *target, cfg *tls.Config, workers int, d time.Duration, begin, end func()) (int, time.Duration, error) {
	one := func() error {
		c, err := dialer.DialContext(ctx, "tcp", tgt.pick())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Client(c, cfg)
		var buf [msgSize]byte
		if _, err := tc.Write(buf[:]); err != nil { // handshakes first
			return err
		}
		if _, err := io.ReadFull(tc, buf[:]); err != nil {
			return err
		}
		return tc.Close()
	}
	for range 20 { // warm-up
		if err := one(); err != nil {
			return 0, 0, fmt.Errorf("new connections: warm-up: %w", err)
		}
	}
	const maxPerWorker = 1_000_000
	var (
		stop   atomic.Bool
		done   atomic.Int64
		failed atomic.Int64
		first  atomic.Value
		wg     sync.WaitGroup
	)
	begin()
	t0 := time.Now()
	for range workers {
		wg.Go(func() {
			for range maxPerWorker {
				if stop.Load() || ctx.Err() != nil {
					return
				}
				if err := one(); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
					continue
				}
				done.Add(1)
			}
		})
	}
	sleepCtx(ctx, d)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(t0)
	end()
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	// A handful of failures (say, a port in TIME_WAIT) would hardly change
	// the rate; more mean something is wrong.
	if f := failed.Load(); f > done.Load()/100 {
		return 0, 0, fmt.Errorf("new connections: %d failed, %d done; first: %v", f, done.Load(), first.Load())
	}
	return int(done.Load()), elapsed, nil
}

// openIdle opens echo connections (one round trip each, then idle) until
// *held has n, with par dialers at once.
func openIdle(ctx context.Context, tgt *target, held *[]net.Conn, n, par int) error {
	need := n - len(*held)
	if need <= 0 {
		return nil
	}
	var (
		mu   sync.Mutex
		next atomic.Int64
		errs = make([]error, par)
		wg   sync.WaitGroup
	)
	for w := range par {
		wg.Go(func() {
			for next.Add(1) <= int64(need) {
				if ctx.Err() != nil {
					errs[w] = ctx.Err()
					return
				}
				c, err := dialEcho(tgt.pick())
				if err != nil {
					errs[w] = err
					return
				}
				mu.Lock()
				*held = append(*held, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("idle connections: %d of %d open: %w", len(*held), n, err)
	}
	return nil
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
