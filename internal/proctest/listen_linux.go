package proctest

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// ListenTCP opens a TCP socket bound to ip on a free port and listening with
// exactly backlog, which never accepts. v6only sets IPV6_V6ONLY on an IPv6
// socket. It skips the test when the machine cannot bind ip.
func ListenTCP(tb testing.TB, ip netip.Addr, backlog int, v6only bool) netip.AddrPort {
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

// ListenUnix opens a Unix stream socket bound to path and listening with
// exactly backlog, which never accepts.
func ListenUnix(tb testing.TB, path string, backlog int) {
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
