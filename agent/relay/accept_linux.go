//go:build linux

package relay

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// acceptBatch bounds the accepts per readiness event, so one loop does
	// not take a whole burst while the others idle; the listener is
	// level-triggered, so the rest is reported again.
	acceptBatch = 32
	// acceptPause is how long a loop stops accepting after accept failed
	// for lack of resources (descriptors, memory).
	acceptPause = 100 * time.Millisecond
	// timerGrain rounds connect deadlines up, so that many connects share
	// one wake-up.
	timerGrain = int64(10 * time.Millisecond)
)

// Event tags (EpollEvent.Pad): pairs and dials get a sequence number from
// firstTag on, so that an event for a descriptor closed and reused within
// one batch is recognised as stale.
const (
	tagEventfd  = 0
	tagListener = 1
	firstTag    = 2
)

// lnReg is a listening socket registered in its owner loop.
type lnReg struct {
	fd   int // a duplicate of the caller's listener
	h    Handler
	refs atomic.Int32 // loops that still hold fd
	done chan struct{}
}

// release drops one loop's hold; the last closes the descriptor.
func (r *lnReg) release() {
	if r.refs.Add(-1) == 0 {
		rawClose(r.fd)
		close(r.done)
	}
}

// lnCmd asks a loop to start (add) or stop accepting on a listener.
type lnCmd struct {
	r   *lnReg
	add bool
}

// lnState is a listener as one loop sees it.
type lnState struct {
	r           *lnReg
	pausedUntil int64 // unix ns; 0 = registered in the loop's epoll
}

// dial is an accepted client whose upstream connect is in progress.
type dial struct {
	cfd, ufd   int
	s          Setup
	t          Target
	tag        uint32
	deadline   int64 // unix ns, 0 = none
	idx        int   // index in loop.dials, -1 when not there
	registered bool  // ufd is in the loop's epoll
}

func (b *epollBackend) serve(ln *net.TCPListener, ka net.KeepAliveConfig, h Handler) (func(), error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("relay: serve: %w", err)
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return nil, fmt.Errorf("relay: serve: dup listener: %w", errors.Join(err, derr))
	}
	// Accepted sockets inherit TCP_NODELAY and the keepalive settings
	// from the listening socket (Linux copies them at accept): set them
	// once here rather than with five system calls per connection.
	setNoDelay(fd)
	setKeepalive(fd, ka)
	r := &lnReg{fd: fd, h: h, done: make(chan struct{})}
	// One loop owns each listener (round robin over listeners): the
	// loops wait on their epoll instance through Go's netpoller, so a
	// listener registered in every loop would wake them all for each
	// connection (EPOLLEXCLUSIVE does not help there), which measured
	// about 15% more CPU per new connection than one owner.
	i := int(b.next.Add(1)) % len(b.loops)
	loops := b.loops[i : i+1]
	r.refs.Store(int32(len(loops)))
	for _, l := range loops {
		l.listenCmd(r, true)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, l := range loops {
				l.listenCmd(r, false)
			}
			<-r.done
		})
	}, nil
}

// listenCmd queues a listener command for the loop.
func (l *loop) listenCmd(r *lnReg, add bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.state == stateStopped:
		if add {
			r.release()
		} // else finish released it
		return
	case l.state == stateNew && !add:
		// The loop may never run: drop the queued add here.
		for i, c := range l.lnCmds {
			if c.r == r && c.add {
				l.lnCmds = append(l.lnCmds[:i], l.lnCmds[i+1:]...)
				r.release()
				return
			}
		}
		return
	}
	l.lnCmds = append(l.lnCmds, lnCmd{r: r, add: add})
	l.wakeLocked()
}

// runLnCmd applies a listener command on the loop.
func (l *loop) runLnCmd(c lnCmd) {
	if c.add {
		st := &lnState{r: c.r}
		l.lns = append(l.lns, st)
		if err := l.watchListener(st); err != nil {
			l.log.Error("relay: cannot watch listener", "error", err)
			l.lns = l.lns[:len(l.lns)-1]
			c.r.release()
		}
		return
	}
	for i, st := range l.lns {
		if st.r == c.r {
			if st.pausedUntil == 0 {
				_ = rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, st.r.fd, nil)
			}
			l.lns = append(l.lns[:i], l.lns[i+1:]...)
			c.r.release()
			return
		}
	}
}

func (l *loop) watchListener(st *lnState) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(st.r.fd), Pad: tagListener}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, st.r.fd, &ev); err != nil {
		return fmt.Errorf("epoll add listener: %w", err)
	}
	st.pausedUntil = 0
	return nil
}

// onListener accepts what the listener holds.
func (l *loop) onListener(fd int) {
	var st *lnState
	for _, s := range l.lns {
		if s.r.fd == fd && s.pausedUntil == 0 {
			st = s
			break
		}
	}
	if st == nil {
		return
	}
	for range acceptBatch {
		cfd, remote, err := rawAccept4(fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		default:
			l.log.Warn("accept failed", "error", err, "retry_in", acceptPause)
			_ = rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			st.pausedUntil = l.now + int64(acceptPause)
			l.armTimer(st.pausedUntil)
			return
		}
		d := &dial{cfd: cfd, ufd: -1, idx: -1}
		d.s = st.r.h(remote)
		l.nextAttempt(d)
	}
}

// nextAttempt connects d to the next target until a connect is in
// progress or succeeded, or the Setup gives up.
func (l *loop) nextAttempt(d *dial) {
	for {
		t, ok := d.s.Next()
		if !ok {
			resetClose(d.cfd)
			return
		}
		d.t = t
		done, err := l.connect(d)
		if err == nil {
			if done {
				l.established(d)
			}
			return
		}
		d.s.Failed(t, err)
	}
}

// connect opens d's upstream socket and starts connecting it. It reports
// whether the connect completed at once; nil with false means in progress.
func (l *loop) connect(d *dial) (bool, error) {
	a := d.t.Addr.Addr().Unmap()
	family, zone := unix.AF_INET, uint32(0)
	if !a.Is4() {
		family = unix.AF_INET6
		if z := a.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				zone = uint32(ifi.Index)
			}
		}
	}
	fd, err := rawSocket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("socket: %w", err)
	}
	setNoDelay(fd)
	ka := d.t.Keepalive
	if ka == (net.KeepAliveConfig{}) {
		ka = net.KeepAliveConfig{Enable: true}
	}
	setKeepalive(fd, ka)
	d.ufd, d.registered = fd, false
	err = rawConnect(fd, d.t.Addr, zone)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		rawClose(fd)
		d.ufd = -1
		return false, fmt.Errorf("connect %s: %w", d.t.Addr, err)
	}
	d.tag = l.nextTag()
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLET, Fd: int32(fd), Pad: int32(d.tag)}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		rawClose(fd)
		d.ufd = -1
		return false, fmt.Errorf("epoll add: %w", err)
	}
	d.registered = true
	l.dialFD = growFD(l.dialFD, fd)
	l.dialFD[fd] = d
	d.idx = len(l.dials)
	l.dials = append(l.dials, d)
	if d.t.Timeout > 0 {
		d.deadline = l.now + int64(d.t.Timeout)
		l.armTimer(d.deadline)
	}
	return false, nil
}

// onDial handles readiness of a connecting socket.
func (l *loop) onDial(d *dial, events uint32) {
	errno, err := rawGetsockoptInt(d.ufd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = unix.Errno(errno)
	} else if err == nil && events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		err = unix.ECONNRESET
	}
	if err == nil && events&unix.EPOLLOUT == 0 {
		return
	}
	l.dropDial(d)
	if err == nil {
		l.established(d)
		return
	}
	l.failDial(d, fmt.Errorf("connect %s: %w", d.t.Addr, err))
}

// failDial closes d's upstream socket, reports err and tries the next target.
func (l *loop) failDial(d *dial, err error) {
	rawClose(d.ufd)
	d.ufd = -1
	d.s.Failed(d.t, err)
	l.nextAttempt(d)
}

// dropDial removes d from the loop's connecting set.
func (l *loop) dropDial(d *dial) {
	if d.idx < 0 {
		return
	}
	l.dialFD[d.ufd] = nil
	last := len(l.dials) - 1
	l.dials[d.idx] = l.dials[last]
	l.dials[d.idx].idx = d.idx
	l.dials[last] = nil
	l.dials = l.dials[:last]
	d.idx = -1
}

// established turns a connected d into a relayed pair.
func (l *loop) established(d *dial) {
	p := newEpair(l, d.cfd, d.ufd, Options{})
	o := d.s.Connected(d.t, &Pair{a: p})
	p.o = o
	if o.IdleTimeout > 0 {
		p.idle = int64(o.IdleTimeout)
	}
	l.b.e.active.Add(1)
	l.add(p, d.registered)
}

// armTimer makes the loop wake by at (unix ns).
func (l *loop) armTimer(at int64) {
	if l.timerAt == 0 || at < l.timerAt {
		l.timerAt = at
	}
}

// timers fails connects past their deadline and resumes paused listeners.
func (l *loop) timers() {
	l.timerAt = 0
	var expired []*dial
	for _, d := range l.dials {
		switch {
		case d.deadline == 0:
		case d.deadline <= l.now:
			expired = append(expired, d)
		default:
			l.armTimer(d.deadline)
		}
	}
	for _, st := range l.lns {
		if st.pausedUntil == 0 {
			continue
		}
		if st.pausedUntil > l.now {
			l.armTimer(st.pausedUntil)
			continue
		}
		if err := l.watchListener(st); err != nil {
			st.pausedUntil = l.now + int64(acceptPause)
			l.armTimer(st.pausedUntil)
		}
	}
	for _, d := range expired {
		l.dropDial(d)
		l.failDial(d, fmt.Errorf("connect %s: %w", d.t.Addr, unix.ETIMEDOUT))
	}
}

// nextTag returns a fresh event tag.
func (l *loop) nextTag() uint32 {
	l.tag++
	if l.tag < firstTag {
		l.tag = firstTag
	}
	return l.tag
}

// growFD makes s long enough to index fd.
func growFD[T any](s []*T, fd int) []*T {
	if fd < len(s) {
		return s
	}
	return append(s, make([]*T, fd+1-len(s)+len(s)/2)...)
}

// setNoDelay sets TCP_NODELAY, as Go does on every TCP socket.
func setNoDelay(fd int) {
	_ = rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
}

// setKeepalive applies ka like net.TCPConn.SetKeepAliveConfig: zero
// durations mean 15 s, a zero count 9 probes; negative ones leave the
// system default.
func setKeepalive(fd int, ka net.KeepAliveConfig) {
	if !ka.Enable {
		return
	}
	_ = rawSetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	secs := func(d time.Duration) int {
		if d == 0 {
			d = 15 * time.Second
		}
		return max(1, int((d+time.Second-1)/time.Second))
	}
	if ka.Idle >= 0 {
		_ = rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(ka.Idle))
	}
	if ka.Interval >= 0 {
		_ = rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(ka.Interval))
	}
	if ka.Count >= 0 {
		n := ka.Count
		if n == 0 {
			n = 9
		}
		_ = rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, n)
	}
}

// resetClose closes fd with RST.
func resetClose(fd int) { rawResetClose(fd) }
