package backlog

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// maxPathLen is the longest Unix socket path: sun_path holds 108 bytes, and
// the last one is the terminating NUL (unix(7)).
const maxPathLen = 107

// unixPrefix marks a Unix socket address, as gunicorn's --bind spells it.
const unixPrefix = "unix:"

// Addr is a listening address to watch.
type Addr struct {
	network string // "tcp" or "unix"
	ip      netip.Addr
	port    uint16
	path    string
}

// ParseAddr parses a TCP address, "127.0.0.1:8000", "[::1]:8000",
// "0.0.0.0:8000" or "[::]:8000", or a Unix socket path, "unix:/run/app.sock".
// Hosts must be IP addresses: a name could resolve to anything, and a
// listener is bound to an address. A Unix path must be absolute; it is
// compared, cleaned, with the path the listener was bound to.
func ParseAddr(s string) (Addr, error) {
	if path, ok := strings.CutPrefix(s, unixPrefix); ok {
		switch {
		case !strings.HasPrefix(path, "/"):
			return Addr{}, addrError(s, "the path after unix: must be absolute, as in unix:/run/app.sock")
		case len(path) > maxPathLen:
			return Addr{}, addrError(s, "a Unix socket path must be at most 107 bytes long")
		case strings.IndexByte(path, 0) >= 0:
			return Addr{}, addrError(s, "a Unix socket path must not contain a NUL byte")
		}
		return Addr{network: "unix", path: filepath.Clean(path)}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Addr{}, addrError(s, tcpProblem(s))
	}
	switch {
	case ap.Port() == 0:
		return Addr{}, addrError(s, "the port must be from 1 to 65535")
	case ap.Addr().Zone() != "":
		return Addr{}, addrError(s, "an IPv6 address with a zone is not supported")
	}
	return Addr{network: "tcp", ip: ap.Addr(), port: ap.Port()}, nil
}

// tcpProblem says what is wrong with s, which netip.ParseAddrPort refused.
func tcpProblem(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want IP:port (127.0.0.1:8000, [::1]:8000, 0.0.0.0:8000) or unix:/absolute/path"
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "the port must be from 1 to 65535"
	}
	if host == "" {
		return "the host must be an IP address; use 0.0.0.0 or [::] for every address"
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return "the host must be an IP address, not a name"
	}
	return "want IP:port, with an IPv6 address in brackets ([::1]:8000)"
}

func addrError(s, problem string) error {
	return fmt.Errorf("listen address %q: %s", s, problem)
}

// String returns a in the form it was given in, canonical:
// "127.0.0.1:8000", "[::1]:8000" or "unix:/run/app.sock".
func (a Addr) String() string {
	switch a.network {
	case "tcp":
		return netip.AddrPortFrom(a.ip, a.port).String()
	case "unix":
		return unixPrefix + a.path
	}
	return ""
}
