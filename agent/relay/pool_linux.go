//go:build linux

package relay

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// pipe is a kernel pipe used by splice.
type pipe struct{ r, w int }

func (pp pipe) close() {
	_ = unix.Close(pp.r)
	_ = unix.Close(pp.w)
}

// getPipe takes a pipe from the loop's pool or creates one.
func (l *loop) getPipe() (pipe, error) {
	if n := len(l.pipes); n > 0 {
		pp := l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
		return pp, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return pipe{}, fmt.Errorf("pipe2: %w", err)
	}
	// Best effort: a bigger pipe takes more of a bulk transfer per splice.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return pipe{r: fds[0], w: fds[1]}, nil
}

// getBuf takes a pending buffer for n bytes from the loop's pools or
// allocates one. There are two sizes, so a backed-up pair of a small
// protocol holds 16 KiB, not 64.
func (l *loop) getBuf(n int) []byte {
	pool, size := &l.bufs, readBufSize
	if n <= smallBufSize {
		pool, size = &l.smallBufs, smallBufSize
	}
	if k := len(*pool); k > 0 {
		b := (*pool)[k-1]
		*pool = (*pool)[:k-1]
		return b
	}
	return make([]byte, size)
}

// release returns what d holds to the loop's pools. A pipe that still holds
// bytes (the pair is closing) is closed instead.
func (l *loop) release(d *direction) {
	if d.hasPipe {
		if d.inPipe == 0 && len(l.pipes) < maxPooledPipes {
			l.pipes = append(l.pipes, d.pipe)
		} else {
			d.pipe.close()
		}
		d.hasPipe, d.inPipe = false, 0
	}
	if d.buf != nil {
		pool := &l.bufs
		if len(d.buf) == smallBufSize {
			pool = &l.smallBufs
		}
		if len(*pool) < maxPooledBufs {
			*pool = append(*pool, d.buf)
		}
		d.buf, d.off, d.end = nil, 0, 0
	}
}
