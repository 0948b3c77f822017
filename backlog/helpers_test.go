package backlog

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/internal/proctest"
)

// Shared with the other packages' tests: internal/proctest.
var (
	shortDir = proctest.ShortDir
)

// settle is how long a test waits for handshakes the kernel completes on its
// own; it is a deadline, never a measurement.
const settle = 10 * time.Second

// listenTCP opens a TCP socket bound to ip on a free port and listening with
// exactly backlog, which never accepts. v6only sets IPV6_V6ONLY on an IPv6
// socket. It skips the test when the machine cannot bind ip.
func listenTCP(tb testing.TB, ip netip.Addr, backlog int, v6only bool) netip.AddrPort {
	tb.Helper()
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: ip.As16()}
	if ip.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Addr: ip.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socket: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if family == unix.AF_INET6 {
		v := 0
		if v6only {
			v = 1
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v); err != nil {
			tb.Fatalf("setsockopt IPV6_V6ONLY: %v", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EAFNOSUPPORT) {
			tb.Skipf("this machine cannot bind %s: %v", ip, err)
		}
		tb.Fatalf("bind %s: %v", ip, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		tb.Fatalf("listen: %v", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		tb.Fatalf("getsockname: %v", err)
	}
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(ip, uint16(got.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(ip, uint16(got.Port))
	}
	tb.Fatalf("getsockname: unexpected %T", got)
	return netip.AddrPort{}
}

// listenUnix opens a Unix stream socket bound to path and listening with
// exactly backlog, which never accepts.
func listenUnix(tb testing.TB, path string, backlog int) {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socket: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		tb.Fatalf("bind %s: %v", path, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		tb.Fatalf("listen: %v", err)
	}
}

// dial opens n connections to addr ("tcp" or "unix") and keeps them open
// until the test ends.
func dial(tb testing.TB, network, addr string, n int) {
	tb.Helper()
	d := net.Dialer{Timeout: settle}
	for range n {
		c, err := d.Dial(network, addr)
		if err != nil {
			tb.Fatalf("dial %s: %v", addr, err)
		}
		tb.Cleanup(func() { c.Close() })
	}
}

// readUntil reads r until the queue of its address i holds want
// connections, and returns that read. The client's connect returns before
// the listener has seen the final ACK, so the count can lag a moment.
func readUntil(tb testing.TB, r *Reader, i int, want uint32) []Queue {
	tb.Helper()
	deadline := time.Now().Add(settle)
	for {
		qs, err := r.Read()
		if err != nil {
			tb.Fatalf("Read: %v", err)
		}
		if qs[i].Queued == want || time.Now().After(deadline) {
			return qs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustParse(tb testing.TB, s string) Addr {
	tb.Helper()
	a, err := ParseAddr(s)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func newReader(tb testing.TB, addrs ...string) *Reader {
	tb.Helper()
	as := make([]Addr, len(addrs))
	for i, s := range addrs {
		as[i] = mustParse(tb, s)
	}
	return NewReader(as)
}

func wantQueues(tb testing.TB, got, want []Queue) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("got %d queues %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range want {
		if got[i] != want[i] {
			tb.Errorf("queue %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func somaxconn(tb testing.TB) uint32 {
	tb.Helper()
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		tb.Fatal(err)
	}
	return uint32(n)
}
