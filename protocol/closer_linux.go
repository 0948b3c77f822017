package protocol

import (
	"sync"

	"golang.org/x/sys/unix"
)

// closerQueue is how many datagrams' descriptors may wait for the closer
// before the next batch gets a goroutine of its own.
const closerQueue = 256

// closer closes the descriptors that came with datagrams, away from the
// goroutines that read the socket. A close can block: the last reference
// to a TCP socket with SO_LINGER and unsent data waits out the linger time,
// up to the sender's choice of seconds. On the reading goroutine that
// would hold up every message behind it, barriers included.
//
// A socket's lingering is switched off before the close, so that the close
// returns at once and the kernel sends what is left in the background, as
// for any socket. A close that blocks all the same (a sender that switches
// it on again while it still holds a copy, a file on a slow file system)
// holds up only the closer, and when its queue is full, the next batches
// are closed on goroutines of their own.
type closer struct {
	queue chan []int
	done  chan struct{}
	extra sync.WaitGroup // the batches closed beside the queue
}

func newCloser() *closer {
	c := &closer{queue: make(chan []int, closerQueue), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for fds := range c.queue {
			closeFDs(fds)
		}
	}()
	return c
}

// close closes fds soon, without blocking the caller. The closer owns
// them from the call on.
func (c *closer) close(fds []int) {
	if len(fds) == 0 {
		return
	}
	select {
	case c.queue <- fds:
	default:
		c.extra.Go(func() { closeFDs(fds) })
	}
}

// stop returns once every descriptor handed to close is closed. Nothing
// may call close after it.
func (c *closer) stop() {
	close(c.queue)
	<-c.done
	c.extra.Wait()
}

// closeFDs closes each descriptor, a socket with its lingering switched
// off first.
func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd < 0 {
			continue
		}
		if l, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER); err == nil && l.Onoff != 0 {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
		}
		unix.Close(fd)
	}
}
