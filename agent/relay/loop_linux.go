//go:build linux

package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// maxEvents is how many readiness events one wait returns at most.
	maxEvents = 256
	// maxPooledPipes and maxPooledBufs bound each loop's free lists.
	maxPooledPipes = 32
	maxPooledBufs  = 64
)

// loop is one event loop: a goroutine, an epoll instance and the pairs
// registered in it. Everything below mu is touched only by the loop's
// goroutine once Run started.
type loop struct {
	b   *epollBackend
	id  int
	log *slog.Logger

	mu       sync.Mutex
	state    int      // stateNew, stateRunning, stateStopped
	woken    bool     // an eventfd wake-up is pending
	evfd     int      // eventfd that wakes the loop; valid while state == stateRunning
	incoming []*epair // pairs to register
	aborts   []*epair // pairs to abort
	lnCmds   []lnCmd  // listeners to start or stop accepting on
	stopping atomic.Bool

	epfd    int
	ep      *os.File // epfd, so the loop waits in Go's netpoller, not in a parked thread
	rc      syscall.RawConn
	events  []unix.EpollEvent
	nready  int
	pollErr error

	inSpare, abSpare []*epair   // reused queue slices
	buf              []byte     // read/write buffer shared by all pairs of the loop
	bufs, smallBufs  [][]byte   // free pending buffers of each size
	pipes            []pipe     // free pipes
	byFD             []*epair   // pair of each registered socket
	pairs            []*epair   // registered pairs
	idleCount        int        // registered pairs with an idle timeout
	now              int64      // unix ns, updated on each wake-up
	sweepAt          int64      // next idle sweep
	deadline         int64      // read deadline set on ep, 0 = none
	lns              []*lnState // listeners this loop accepts on
	dials            []*dial    // connects in progress
	dialFD           []*dial    // connect of each connecting upstream socket
	timerAt          int64      // next connect deadline or listener resume, 0 = none
	tag              uint32     // last event tag handed out
}

func newLoop(b *epollBackend, id int) *loop {
	return &loop{b: b, id: id, log: b.e.log, epfd: -1, evfd: -1}
}

// open creates the epoll instance and the eventfd and marks the loop running.
func (l *loop) open() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		return fmt.Errorf("epoll nonblock: %w", err)
	}
	ep := os.NewFile(uintptr(epfd), "relay-epoll")
	rc, err := ep.SyscallConn()
	if err == nil {
		// Fails unless Go's netpoller accepted the epoll fd.
		err = ep.SetReadDeadline(time.Time{})
	}
	if err != nil {
		_ = ep.Close()
		return fmt.Errorf("poll epoll fd: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = ep.Close()
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(evfd)
		_ = ep.Close()
		return fmt.Errorf("epoll add eventfd: %w", err)
	}
	l.epfd, l.ep, l.rc = epfd, ep, rc
	l.events = make([]unix.EpollEvent, maxEvents)
	l.buf = make([]byte, readBufSize)
	l.mu.Lock()
	l.evfd = evfd
	l.state = stateRunning
	l.mu.Unlock()
	return nil
}

// enqueue hands p to the loop. It reports false if the loop stopped.
func (l *loop) enqueue(p *epair) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == stateStopped {
		return false
	}
	l.incoming = append(l.incoming, p)
	l.b.e.active.Add(1)
	l.wakeLocked()
	return true
}

// requestAbort asks the loop to abort p.
func (l *loop) requestAbort(p *epair) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == stateStopped {
		return // the loop closed or is closing every pair
	}
	l.aborts = append(l.aborts, p)
	l.wakeLocked()
}

// stop makes the loop close every pair and return.
func (l *loop) stop() {
	l.stopping.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.woken = false
	l.wakeLocked()
}

// wakeLocked writes the eventfd once per drain. It runs under mu so the
// eventfd cannot be closed (and its number reused) during the write; the
// write never blocks.
func (l *loop) wakeLocked() {
	if l.state != stateRunning || l.woken {
		return
	}
	l.woken = true
	one := [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

// run is the loop's goroutine.
func (l *loop) run() error {
	defer l.finish()
	l.now = time.Now().UnixNano()
	for {
		l.drain()
		if l.stopping.Load() {
			return nil
		}
		if err := l.wait(); err != nil {
			return fmt.Errorf("relay: loop %d: %w", l.id, err)
		}
		for i := range l.nready {
			l.handle(&l.events[i])
		}
		l.nready = 0
		if l.idleCount > 0 && l.now >= l.sweepAt {
			l.sweep()
		}
		if l.timerAt != 0 && l.now >= l.timerAt {
			l.timers()
		}
	}
}

// wait blocks until events are ready or the next idle sweep is due.
func (l *loop) wait() error {
	if err := l.setDeadline(); err != nil {
		return err
	}
	err := l.rc.Read(l.pollReady)
	l.now = time.Now().UnixNano()
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("wait: %w", err)
	}
	if l.pollErr != nil {
		return fmt.Errorf("epoll_wait: %w", l.pollErr)
	}
	return nil
}

// pollReady collects ready events without blocking; it reports false to
// make the caller wait for the epoll fd to become readable.
func (l *loop) pollReady(uintptr) bool {
	for {
		n, err := rawEpollPoll(l.epfd, l.events)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		l.nready, l.pollErr = max(n, 0), err
		return n > 0 || err != nil
	}
}

// setDeadline arms the wait's deadline for the next idle sweep or timer.
func (l *loop) setDeadline() error {
	want := int64(0)
	if l.idleCount > 0 {
		want = l.sweepAt
	}
	if l.timerAt != 0 {
		at := (l.timerAt + timerGrain - 1) / timerGrain * timerGrain
		if want == 0 || at < want {
			want = at
		}
	}
	if want == l.deadline {
		return nil
	}
	t := time.Time{}
	if want != 0 {
		t = time.Unix(0, want)
	}
	if err := l.ep.SetReadDeadline(t); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	l.deadline = want
	return nil
}

// drain registers new pairs and aborts pairs whose Close was called.
func (l *loop) drain() {
	l.mu.Lock()
	in, ab, lc := l.incoming, l.aborts, l.lnCmds
	l.incoming, l.aborts = l.inSpare[:0], l.abSpare[:0]
	if lc != nil {
		l.lnCmds = nil
	}
	l.woken = false
	l.mu.Unlock()
	for _, c := range lc {
		l.runLnCmd(c)
	}
	for _, p := range in {
		l.add(p, false)
	}
	for _, p := range ab {
		l.closePair(p, ReasonClosed)
	}
	clear(in)
	clear(ab)
	l.inSpare, l.abSpare = in, ab
}

// add registers p's sockets; upRegistered says the upstream socket is in
// the epoll set already (it was connected by the loop).
func (l *loop) add(p *epair, upRegistered bool) {
	p.last = l.now
	p.registered = true
	p.tag = l.nextTag()
	l.byFD = growFD(l.byFD, max(p.fd[0], p.fd[1]))
	l.byFD[p.fd[0]], l.byFD[p.fd[1]] = p, p
	p.idx = len(l.pairs)
	l.pairs = append(l.pairs, p)
	if p.idle > 0 {
		if l.idleCount == 0 {
			l.sweepAt = l.now + int64(sweepInterval)
		}
		l.idleCount++
	}
	for i, fd := range p.fd {
		op := unix.EPOLL_CTL_ADD
		if i == 1 && upRegistered {
			op = unix.EPOLL_CTL_MOD
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: int32(p.tag)}
		if err := rawEpollCtl(l.epfd, op, fd, &ev); err != nil {
			l.closePair(p, "error: epoll add: "+err.Error())
			return
		}
	}
}

// handle dispatches one readiness event.
func (l *loop) handle(ev *unix.EpollEvent) {
	fd, tag := int(ev.Fd), uint32(ev.Pad)
	switch tag {
	case tagEventfd:
		var b [8]byte
		_, _ = unix.Read(fd, b[:])
		return
	case tagListener:
		l.onListener(fd)
		return
	}
	if fd < len(l.dialFD) && l.dialFD[fd] != nil && l.dialFD[fd].tag == tag {
		l.onDial(l.dialFD[fd], ev.Events)
		return
	}
	if fd >= len(l.byFD) || l.byFD[fd] == nil || l.byFD[fd].tag != tag {
		return // closed earlier in this batch
	}
	p := l.byFD[fd]
	side := 0
	if fd == p.fd[1] {
		side = 1
	}
	p.onEvent(side, ev.Events)
}

// sweep closes pairs idle for longer than their timeout.
func (l *loop) sweep() {
	for i := len(l.pairs) - 1; i >= 0; i-- {
		if i >= len(l.pairs) {
			continue
		}
		p := l.pairs[i]
		if p.idle > 0 && l.now-p.last >= p.idle {
			l.closePair(p, ReasonIdle)
		}
	}
	l.sweepAt = l.now + int64(sweepInterval)
}

// closePair closes p's sockets, returns its resources and reports it.
func (l *loop) closePair(p *epair, reason string) {
	if p.closed {
		return
	}
	p.closed = true
	if p.registered {
		l.byFD[p.fd[0]], l.byFD[p.fd[1]] = nil, nil
		last := len(l.pairs) - 1
		l.pairs[p.idx] = l.pairs[last]
		l.pairs[p.idx].idx = p.idx
		l.pairs[last] = nil
		l.pairs = l.pairs[:last]
		if p.idle > 0 {
			l.idleCount--
		}
	}
	for d := range p.dir {
		l.release(&p.dir[d])
	}
	for _, fd := range p.fd {
		if reason != ReasonEOF {
			rawResetClose(fd) // abort: reset rather than linger on unsent data
		} else {
			rawClose(fd)
		}
	}
	l.b.e.active.Add(-1)
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("relay pair done", "reason", reason, "up_bytes", p.total[0], "down_bytes", p.total[1])
	}
	callDone(&p.o, Stats{Up: p.total[0], Down: p.total[1], Reason: reason})
}

// finish closes every pair and the loop's descriptors. It runs when the
// loop returns, or instead of the loop when Run failed to start it.
func (l *loop) finish() {
	l.mu.Lock()
	l.state = stateStopped
	in, lc := l.incoming, l.lnCmds
	l.incoming, l.aborts, l.lnCmds = nil, nil, nil
	evfd := l.evfd
	l.evfd = -1
	l.mu.Unlock()
	for _, c := range lc {
		if c.add {
			c.r.release()
		}
	}
	for _, st := range l.lns {
		st.r.release()
	}
	l.lns = nil
	for len(l.dials) > 0 {
		d := l.dials[len(l.dials)-1]
		l.dropDial(d)
		_ = unix.Close(d.ufd)
		resetClose(d.cfd)
	}
	for _, p := range in {
		l.closePair(p, ReasonClosed)
	}
	for len(l.pairs) > 0 {
		l.closePair(l.pairs[len(l.pairs)-1], ReasonClosed)
	}
	for _, pp := range l.pipes {
		pp.close()
	}
	l.pipes, l.bufs, l.smallBufs = nil, nil, nil
	if evfd >= 0 {
		_ = unix.Close(evfd)
	}
	if l.ep != nil {
		_ = l.ep.Close()
	}
}
