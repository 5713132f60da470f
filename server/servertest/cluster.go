package servertest

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/halolb/halo/internal/slogzap"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server"
)

// EtcdCluster is an etcd cluster of several embedded members on 127.0.0.1,
// for tests that take members away from a halo-server
// (WithEtcdEndpoints(c.Endpoints()...)). Each member has its own data
// directory and keeps fsync on: a write etcd acknowledged is on a quorum's
// disks, as in production. Everything stops when the test ends.
//
// Every member's client and peer URLs are TCP forwarders on ephemeral
// ports, bound before any member starts (so that each knows the others'
// peer URLs up front, with no port picked free and then raced for), in
// front of the member's own listeners (also on ephemeral ports). They let
// StopMember cut every connection of a member at once, as a crash does.
type EtcdCluster struct {
	t       testing.TB
	mu      sync.Mutex
	members []*clusterMember
}

// clusterMember is one member; e is nil once it is stopped.
type clusterMember struct {
	name         string
	client, peer *Forwarder
	id           uint64 // raft member ID, known once started
	e            *embed.Etcd
	closing      *atomic.Bool
	stopOnce     sync.Once
}

// clusterStartTimeout bounds how long NewEtcdCluster waits for a quorum.
const clusterStartTimeout = time.Minute

// NewEtcdCluster starts an etcd cluster of n members on loopback and waits
// until every member serves.
func NewEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("servertest: an etcd cluster of %d members", n)
	}
	c := &EtcdCluster{t: t}
	t.Cleanup(c.stopAll)
	if err := c.start(n, t.TempDir()); err != nil {
		t.Fatalf("servertest: etcd cluster: %v", err)
	}
	return c
}

// start starts n members in dir and waits until each is ready.
func (c *EtcdCluster) start(n int, dir string) error {
	var initial []string
	for i := range n {
		m := &clusterMember{name: fmt.Sprintf("m%d", i), closing: &atomic.Bool{}}
		var err error
		if m.client, err = newForwarder(); err != nil {
			return err
		}
		if m.peer, err = newForwarder(); err != nil {
			m.client.close()
			return err
		}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peer.URL())
	}
	token := fmt.Sprintf("halo-test-%d", time.Now().UnixNano())
	for _, m := range c.members {
		ec := embed.NewConfig()
		ec.Name = m.name
		ec.Dir = filepath.Join(dir, m.name)
		any0 := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
		cu, _ := url.Parse(m.client.URL())
		pu, _ := url.Parse(m.peer.URL())
		ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{any0}, []url.URL{*cu}
		ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{any0}, []url.URL{*pu}
		ec.InitialCluster = strings.Join(initial, ",")
		ec.InitialClusterToken = token
		ec.ClusterState = embed.ClusterStateFlagNew
		// As the embedded etcd: a dead leader is replaced within about a
		// second, and loopback round trips are far below the tick.
		ec.TickMs = 100
		ec.ElectionMs = 1000
		ec.Logger = "zap"
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(memberLogger(Logger(c.t), m.name, m.closing))
		e, err := embed.StartEtcd(ec)
		if err != nil {
			return fmt.Errorf("member %s: %w", m.name, err)
		}
		c.mu.Lock()
		m.e = e
		c.mu.Unlock()
		if len(e.Clients) != 1 || len(e.Peers) != 1 {
			return fmt.Errorf("member %s: %d client and %d peer listeners, want one each", m.name, len(e.Clients), len(e.Peers))
		}
		m.client.SetTarget("tcp", e.Clients[0].Addr().String())
		m.peer.SetTarget("tcp", e.Peers[0].Addr().String())
	}
	timer := time.NewTimer(clusterStartTimeout)
	defer timer.Stop()
	for _, m := range c.members {
		select {
		case <-m.e.Server.ReadyNotify():
			c.mu.Lock()
			m.id = uint64(m.e.Server.MemberID())
			c.mu.Unlock()
		case err := <-m.e.Err():
			return fmt.Errorf("member %s: %w", m.name, err)
		case <-timer.C:
			return fmt.Errorf("member %s not ready after %v", m.name, clusterStartTimeout)
		}
	}
	return nil
}

// memberLogger sends a member's zap logs to the test's logger, named, and
// quiet (debug) once the member is being stopped, when etcd reports its
// peers and listeners going away as errors.
func memberLogger(l *slog.Logger, name string, closing *atomic.Bool) *zap.Logger {
	return slogzap.New(l.Handler(), slogzap.Options{
		InfoAsDebug: true,
		Attrs:       []slog.Attr{slog.String("component", "etcd"), slog.String("member", name)},
		Level: func(_ zapcore.Entry, lv slog.Level) slog.Level {
			if closing.Load() {
				return slog.LevelDebug
			}
			return lv
		},
	})
}

// Endpoints returns the client URLs of the members that run, in member
// order.
func (c *EtcdCluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.members {
		if m.e != nil {
			out = append(out, m.client.URL())
		}
	}
	return out
}

// Endpoint returns member i's client URL, whether it runs or not.
func (c *EtcdCluster) Endpoint(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].client.URL()
}

// StopMember stops member i as a crash would: every connection to it
// (clients' and peers') is cut at once and new ones are closed as soon as
// they are accepted, its raft node stops without handing leadership over
// (the others elect a new leader after the election timeout), and then the
// member shuts down. It returns when the member has stopped; its data
// directory stays. Stopping a stopped member does nothing.
func (c *EtcdCluster) StopMember(i int) {
	c.t.Helper()
	c.mu.Lock()
	if i < 0 || i >= len(c.members) {
		c.mu.Unlock()
		c.t.Fatalf("servertest: no etcd member %d (of %d)", i, len(c.members))
	}
	m := c.members[i]
	c.mu.Unlock()
	c.crash(m)
}

// crash cuts a member off and stops it (once).
func (c *EtcdCluster) crash(m *clusterMember) {
	m.stopOnce.Do(func() {
		c.mu.Lock()
		e := m.e
		m.e = nil
		c.mu.Unlock()
		m.closing.Store(true)
		m.client.Cut()
		m.peer.Cut()
		if e == nil {
			return
		}
		e.Server.HardStop()
		e.Close()
		<-e.Server.StopNotify()
	})
}

// Leader returns the index of the leader the running members agree on,
// waiting for one (as after the leader stopped) up to 30 seconds, after
// which it fails the test. Call it from the test's goroutine.
func (c *EtcdCluster) Leader() int {
	c.t.Helper()
	leader := -1
	waitfor.Nil(c.t, 30*time.Second, "servertest: an etcd leader the running members agree on", func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		var seen []uint64
		for _, m := range c.members {
			if m.e != nil {
				seen = append(seen, uint64(m.e.Server.Leader()))
			}
		}
		if len(seen) == 0 {
			return errors.New("no member runs")
		}
		if seen[0] == 0 || slices.ContainsFunc(seen, func(id uint64) bool { return id != seen[0] }) {
			return fmt.Errorf("the running members see leaders %x", seen)
		}
		for i, m := range c.members {
			if m.id == seen[0] && m.e != nil {
				leader = i
				return nil
			}
		}
		return fmt.Errorf("leader %x is not a running member", seen[0])
	})
	return leader
}

// Client returns an etcd client of the members that run now, closed when
// t ends.
func (c *EtcdCluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return EtcdClient(t, c.Endpoints()...)
}

// stopAll stops every member, all at once (a graceful stop would wait for
// a quorum to hand leadership over), and closes the forwarders.
func (c *EtcdCluster) stopAll() {
	c.mu.Lock()
	members := slices.Clone(c.members)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Go(func() { c.crash(m) })
	}
	wg.Wait()
	for _, m := range members {
		m.client.close()
		m.peer.close()
	}
}

// WithEtcdEndpoints points a server at an external etcd by its client URLs
// (an EtcdCluster's Endpoints), instead of an embedded etcd of its own.
func WithEtcdEndpoints(endpoints ...string) Option {
	return func(c *server.Config) {
		c.EtcdEndpoints = slices.Clone(endpoints)
	}
}
