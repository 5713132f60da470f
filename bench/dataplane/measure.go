package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"time"
)

// runConfig is one layout's settings for measureOne.
type runConfig struct {
	bulkBytes   int64
	duration    time.Duration
	kaConns     int
	ncWorkers   int
	idleCounts  []int // ascending; the held-connection counts measured
	tls         *tls.Config
	backendsPID int
}

const (
	mib = 1 << 20
	gib = 1 << 30
)

// measureOne runs every phase against one proxy (p nil: direct to the
// backends) and returns the figures by metric key. The order is: idle
// memory (after a few connections came and went), keep-alive (with the
// loaded RSS; 16 connections leave little behind), held idle connections
// (before bulk, so that bulk buffers freed but kept by the proxy cannot hide
// their cost), bulk (and the RSS it leaves), new TLS connections, and the
// memory once everything is closed again.
func measureOne(ctx context.Context, cfg runConfig, p *proxyProc, backends []string) (map[string]float64, error) {
	m := map[string]float64{}
	tgt := &target{addrs: backends}
	if p != nil {
		tgt = &target{addrs: []string{p.addr}}
	}
	proxySample := func() sample {
		if p == nil {
			return sample{}
		}
		s, err := readSample(p.pid())
		if err != nil {
			return sample{}
		}
		return s
	}
	genCPU := func() time.Duration {
		s, _ := readSample(cfg.backendsPID)
		return selfCPU() + s.CPU
	}
	// Other processes on the machine (a build, someone's tests) disturb the
	// figures: report how much CPU they took while this ran.
	ours := func() time.Duration { return genCPU() + proxySample().CPU }
	busy0, ours0, wall0 := machineBusy(), ours(), time.Now()
	defer func() {
		others := (machineBusy() - busy0) - (ours() - ours0)
		m["others_cpu"] = max(0, others.Seconds()/time.Since(wall0).Seconds()*100)
	}()

	if p != nil {
		for range 8 {
			if err := echoOnce(p.addr); err != nil {
				return m, fmt.Errorf("warm-up: %w", err)
			}
		}
		sleepCtx(ctx, 500*time.Millisecond)
		s := proxySample()
		m["idle_rss"], m["idle_anon"], m["idle_file"], m["idle_pss"] = s.Mem.RSS/mib, s.Mem.RssAnon/mib, s.Mem.RssFile/mib, s.Mem.Pss/mib
		m["procs"] = float64(s.N)
	}

	var s0, s1 sample
	var g0 time.Duration
	var loaded float64
	ka, err := runKeepAlive(ctx, tgt, cfg.kaConns, cfg.duration,
		func() { s0, g0 = proxySample(), genCPU() },
		func() { loaded = proxySample().Mem.RSS },
		func() { s1 = proxySample(); m["ka_gen_cpu"] = float64((genCPU() - g0).Microseconds()) })
	if err != nil {
		return m, err
	}
	m["ka_rps"] = float64(ka.requests) / ka.elapsed.Seconds()
	m["ka_p50"] = float64(ka.p50.Nanoseconds()) / 1e3
	m["ka_p99"] = float64(ka.p99.Nanoseconds()) / 1e3
	m["ka_gen_cpu"] /= float64(ka.requests)
	if p != nil {
		m["ka_cpu"] = float64((s1.CPU - s0.CPU).Microseconds()) / float64(ka.requests)
		m["loaded_rss"] = max(loaded, s1.Mem.RSS) / mib
	}

	if p != nil {
		var held []net.Conn
		err := func() error {
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			base := proxySample()
			for i, n := range cfg.idleCounts {
				if err := openIdle(ctx, tgt, &held, n, 32); err != nil {
					return err
				}
				sleepCtx(ctx, 500*time.Millisecond)
				s := proxySample()
				m[fmt.Sprintf("conn_rss_%d", i)] = (s.Mem.RSS - base.Mem.RSS) / float64(n) / 1024
				m[fmt.Sprintf("conn_fds_%d", i)] = float64(s.FDs-base.FDs) / float64(n)
			}
			for _, c := range held {
				c.Close()
			}
			held = nil
			// Wait (bounded) for the proxy to close its ends too.
			for range 100 {
				if proxySample().FDs <= base.FDs+8 || ctx.Err() != nil {
					break
				}
				sleepCtx(ctx, 100*time.Millisecond)
			}
			return nil
		}()
		if err != nil {
			return m, err
		}
	}

	if _, err := runBulk(ctx, tgt.pick(), 64*mib); err != nil { // warm-up
		return m, err
	}
	s0 = proxySample()
	el, err := runBulk(ctx, tgt.pick(), cfg.bulkBytes)
	if err != nil {
		return m, err
	}
	s1 = proxySample()
	m["bulk_mbps"] = float64(cfg.bulkBytes) / el.Seconds() / 1e6
	if p != nil {
		m["bulk_cpu"] = (s1.CPU - s0.CPU).Seconds() / (float64(cfg.bulkBytes) / gib)
		m["bulk_rss"] = s1.Mem.RSS / mib
	}

	n, el, err := runNewConns(ctx, tgt, cfg.tls, cfg.ncWorkers, cfg.duration,
		func() { s0, g0 = proxySample(), genCPU() },
		func() { s1 = proxySample(); m["nc_gen_cpu"] = float64((genCPU() - g0).Microseconds()) })
	if err != nil {
		return m, err
	}
	m["nc_cps"] = float64(n) / el.Seconds()
	m["nc_gen_cpu"] /= float64(n)
	if p != nil {
		m["nc_cpu"] = float64((s1.CPU - s0.CPU).Microseconds()) / float64(n)
		sleepCtx(ctx, time.Second)
		s := proxySample()
		m["after_rss"], m["after_anon"] = s.Mem.RSS/mib, s.Mem.RssAnon/mib
	}
	return m, ctx.Err()
}

// waitQuiet waits, at most maxWait, until other processes on the machine
// use less than threshold percent of one CPU over a second (this process and
// the backends excluded; no proxy runs while it waits), and returns the
// last second's figure. Someone's build or tests sharing the two CPUs would
// otherwise decide the comparison.
func waitQuiet(ctx context.Context, backendsPID int, threshold float64, maxWait time.Duration) float64 {
	ours := func() time.Duration {
		s, _ := readSample(backendsPID)
		return selfCPU() + s.CPU
	}
	deadline := time.Now().Add(maxWait)
	others := 0.0
	for i := 0; i < 3600 && ctx.Err() == nil; i++ {
		b0, o0, t0 := machineBusy(), ours(), time.Now()
		sleepCtx(ctx, time.Second)
		others = max(0, ((machineBusy()-b0)-(ours()-o0)).Seconds()/time.Since(t0).Seconds()*100)
		if others < threshold || time.Now().After(deadline) {
			break
		}
		if i == 0 {
			fmt.Fprintf(os.Stderr, "waiting up to %v for other processes to calm down (now %.0f%% of a CPU)\n", maxWait, others)
		}
	}
	return others
}
