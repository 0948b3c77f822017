package protocol

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoAck is returned by Client.Barrier when the receiver did not acknowledge
// the barrier in time.
var ErrNoAck = errors.New("no acknowledgement")

// Client sends notifications to one socket, attaching its own credentials
// explicitly: a receiver that enables SO_PASSCRED only after the datagram was
// queued (socket activation) would otherwise get none.
//
// Its socket is connected and blocking, so a send waits for room in the
// receiver's queue (net.unix.max_dgram_qlen is often only 10) instead of
// failing, bounded by the timeout it is given.
type Client struct {
	fd      int
	addr    string
	timeout time.Duration // the SO_SNDTIMEO in force, to set it only on change
}

// Dial connects to the socket at addr ("@name" for an abstract socket). Its
// errors say plainly whether the socket is missing, is not a socket, or has
// no listener.
func Dial(addr string) (*Client, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return nil, dialError(addr, err)
	}
	return &Client{fd: fd, addr: addr}, nil
}

func dialError(addr string, err error) error {
	if !strings.HasPrefix(addr, "@") {
		fi, serr := os.Stat(addr)
		switch {
		case errors.Is(serr, fs.ErrNotExist):
			return fmt.Errorf("notify socket %s does not exist; is notifyd running?", addr)
		case serr == nil && fi.Mode()&fs.ModeSocket == 0:
			return fmt.Errorf("notify socket %s is not a socket", addr)
		}
	}
	if errors.Is(err, unix.ECONNREFUSED) {
		return fmt.Errorf("nothing listens on notify socket %s; is notifyd running?", addr)
	}
	return fmt.Errorf("connect to notify socket %s: %w", addr, err)
}

// Close closes the client's socket.
func (c *Client) Close() error { return unix.Close(c.fd) }

// Send sends one datagram, waiting at most timeout for room in the
// receiver's queue, with fds attached when there are any.
func (c *Client) Send(payload []byte, timeout time.Duration, fds ...int) error {
	oob := unix.UnixCredentials(&unix.Ucred{
		Pid: int32(os.Getpid()),
		Uid: uint32(os.Getuid()),
		Gid: uint32(os.Getgid()),
	})
	if len(fds) > 0 {
		oob = append(oob, unix.UnixRights(fds...)...)
	}
	if timeout = max(timeout, time.Millisecond); timeout != c.timeout {
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			return fmt.Errorf("set send timeout: %w", err)
		}
		c.timeout = timeout
	}
	for {
		_, err := unix.SendmsgN(c.fd, payload, oob, nil, 0)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return fmt.Errorf("send to %s: its queue stayed full for %s", c.addr, timeout)
		case errors.Is(err, unix.ECONNREFUSED):
			return fmt.Errorf("send to %s: notifyd is no longer listening", c.addr)
		}
		return fmt.Errorf("send to %s: %w", c.addr, err)
	}
}

// Barrier sends BARRIER=1 with one end of a pipe and waits until the receiver
// closes it, which it does once it has applied everything sent before.
// It returns ErrNoAck when that takes longer than timeout.
func (c *Client) Barrier(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("barrier: create pipe: %w", err)
	}
	defer unix.Close(p[0])
	err := c.Send([]byte("BARRIER=1"), timeout, p[1])
	unix.Close(p[1])
	if err != nil {
		return err
	}
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("barrier on %s: %w within %s", c.addr, ErrNoAck, timeout)
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("barrier: poll: %w", err)
		}
		if n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			return nil
		}
	}
}
