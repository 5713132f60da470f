//go:build linux

package relay

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const (
	// readBufSize is the per-loop read/write buffer. With Config.Splice a
	// read that fills it switches the direction to splice.
	readBufSize = 64 << 10
	// smallBufSize is the smaller pending buffer class.
	smallBufSize = 16 << 10
	// pipeSize is the capacity asked for the splice pipes.
	pipeSize = 256 << 10
	// spliceFlags are used for every splice call.
	spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
)

// epair is one pair of the epoll engine. After Relay returned it is touched
// only by its loop's goroutine, except for abortReq.
type epair struct {
	l        *loop
	fd       [2]int       // 0 = client, 1 = upstream
	dir      [2]direction // 0 = up (client→upstream), 1 = down
	total    [2]int64     // bytes written per direction
	readable [2]bool      // per socket: may have data to read
	writable [2]bool      // per socket: may accept data
	hup      [2]bool      // per socket: peer sent FIN or the socket failed
	o        Options
	idle     int64  // IdleTimeout in ns, 0 = none
	last     int64  // unix ns of the last move
	idx      int    // index in loop.pairs
	tag      uint32 // event tag of its sockets

	registered bool
	closed     bool
	abortReq   atomic.Bool
}

// direction holds what one direction read but could not write yet: bytes in
// a pipe or in a pending buffer, never both.
type direction struct {
	pipe     pipe
	hasPipe  bool
	inPipe   int
	buf      []byte
	off, end int
	bulk     bool // use splice for the next read
	eof      bool // the source reached EOF
	done     bool // EOF was passed on with shutdown(SHUT_WR)
}

func newEpair(l *loop, client, upstream int, o Options) *epair {
	p := &epair{l: l, fd: [2]int{client, upstream}, o: o, writable: [2]bool{true, true}}
	if o.IdleTimeout > 0 {
		p.idle = int64(o.IdleTimeout)
	}
	return p
}

// abort implements Pair.Close.
func (p *epair) abort() {
	if p.abortReq.CompareAndSwap(false, true) {
		p.l.requestAbort(p)
	}
}

// pending reports whether d holds bytes not yet written.
func (d *direction) pending() bool { return d.inPipe > 0 || d.off < d.end }

// onEvent records what the event says about socket side and moves bytes.
func (p *epair) onEvent(side int, events uint32) {
	if events&unix.EPOLLERR != 0 {
		if errno, err := unix.GetsockoptInt(p.fd[side], unix.SOL_SOCKET, unix.SO_ERROR); err == nil && errno != 0 {
			p.l.closePair(p, "error: "+unix.Errno(errno).Error())
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		p.readable[side] = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		p.hup[side] = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		p.writable[side] = true
	}
	p.pump()
}

// pump moves bytes both ways as far as the sockets allow and closes the
// pair when both directions are done or one failed.
func (p *epair) pump() {
	for d := range p.dir {
		if err := p.move(d); err != nil {
			p.l.closePair(p, "error: "+err.Error())
			return
		}
	}
	if p.dir[0].done && p.dir[1].done {
		p.l.closePair(p, ReasonEOF)
	}
}

// move runs direction d (source socket d, destination socket 1-d) until it
// would block, is done, or fails.
func (p *epair) move(d int) error {
	dir := &p.dir[d]
	src, dst := d, 1-d
	for !dir.done {
		if dir.pending() {
			if !p.writable[dst] {
				return nil
			}
			if err := p.flush(d); err != nil {
				return err
			}
			continue
		}
		if dir.eof {
			if err := rawShutdown(p.fd[dst], unix.SHUT_WR); err != nil && !errors.Is(err, unix.ENOTCONN) {
				return fmt.Errorf("shutdown: %w", err)
			}
			dir.done = true
			return nil
		}
		if !p.readable[src] || !p.writable[dst] {
			return nil
		}
		var err error
		if dir.bulk {
			err = p.spliceIn(d)
		} else {
			err = p.readWrite(d)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// flush writes what direction d holds. A short write marks the destination
// as full: the next EPOLLOUT edge resumes it.
func (p *epair) flush(d int) error {
	dir := &p.dir[d]
	dst := 1 - d
	var n int
	var err error
	if dir.inPipe > 0 {
		var n64 int64
		n64, err = rawSplice(dir.pipe.r, p.fd[dst], dir.inPipe, spliceFlags)
		n = int(n64)
	} else {
		n, err = rawWrite(p.fd[dst], dir.buf[dir.off:dir.end])
	}
	if errors.Is(err, unix.EAGAIN) {
		p.writable[dst] = false
		return nil
	}
	if errors.Is(err, unix.EINTR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	p.account(d, n)
	if dir.inPipe > 0 {
		dir.inPipe -= n
	} else {
		dir.off += n
	}
	if dir.pending() {
		p.writable[dst] = false
		return nil
	}
	p.l.release(dir)
	return nil
}

// readWrite reads into the loop's buffer and writes straight on; what the
// destination does not take goes to a pending buffer.
func (p *epair) readWrite(d int) error {
	dir := &p.dir[d]
	src, dst := d, 1-d
	buf := p.l.buf
	n, err := rawRead(p.fd[src], buf)
	switch {
	case errors.Is(err, unix.EAGAIN):
		p.readable[src] = false
		return nil
	case errors.Is(err, unix.EINTR):
		return nil
	case err != nil:
		return fmt.Errorf("read: %w", err)
	case n == 0:
		dir.eof = true
		return nil
	}
	if n == len(buf) {
		dir.bulk = p.l.b.splice
	} else if !p.hup[src] {
		// A TCP read returns everything queued; data arriving later
		// raises a new edge. After a FIN we read on until EOF.
		p.readable[src] = false
	}
	w, err := rawWrite(p.fd[dst], buf[:n])
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("write: %w", err)
	}
	w = max(w, 0)
	p.account(d, w)
	if w < n {
		dir.buf = p.l.getBuf(n - w)
		dir.off, dir.end = 0, copy(dir.buf, buf[w:n])
		p.writable[dst] = false
	}
	return nil
}

// spliceIn moves what the source has into a pipe for flush to write.
func (p *epair) spliceIn(d int) error {
	dir := &p.dir[d]
	src := d
	if !dir.hasPipe {
		pp, err := p.l.getPipe()
		if err != nil {
			dir.bulk = false // out of descriptors: fall back to read/write
			return nil
		}
		dir.pipe, dir.hasPipe = pp, true
	}
	n, err := rawSplice(p.fd[src], dir.pipe.w, pipeSize, spliceFlags)
	switch {
	case errors.Is(err, unix.EAGAIN):
		p.readable[src] = false
		dir.bulk = false // next time try a cheap read first
		p.l.release(dir)
		return nil
	case errors.Is(err, unix.EINTR):
		return nil
	case err != nil:
		return fmt.Errorf("splice: %w", err)
	case n == 0:
		dir.eof = true
		p.l.release(dir)
		return nil
	}
	dir.inPipe = int(n)
	return nil
}

// account records n bytes written in direction d.
func (p *epair) account(d, n int) {
	if n <= 0 {
		return
	}
	p.total[d] += int64(n)
	p.last = p.l.now
	if d == 0 {
		addCount(p.o.Up, n)
	} else {
		addCount(p.o.Down, n)
	}
}
