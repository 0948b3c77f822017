package backlog

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/internal/proctest"
)

// Shared with the other packages' tests: internal/proctest.
var (
	listenTCP  = proctest.ListenTCP
	listenUnix = proctest.ListenUnix
	shortDir   = proctest.ShortDir
)

// settle is how long a test waits for handshakes the kernel completes on its
// own; it is a deadline, never a measurement.
const settle = 10 * time.Second

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

// wantQueues compares what every read shows the same; the age and the peak,
// which depend on timing and on earlier reads, have tests of their own.
func wantQueues(tb testing.TB, got, want []Queue) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("got %d queues %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range want {
		if g := got[i]; g.Addr != want[i].Addr || g.Listening != want[i].Listening ||
			g.Queued != want[i].Queued || g.Limit != want[i].Limit || g.Drops != want[i].Drops {
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

// accept takes n connections from ln, keeping them open until the test ends.
func accept(tb testing.TB, ln net.Listener, n int) {
	tb.Helper()
	for range n {
		c, err := ln.Accept()
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
	}
}

// listenUnixAccepting listens on a Unix socket the test accepts from, and
// returns it and its path.
func listenUnixAccepting(tb testing.TB) (net.Listener, string) {
	tb.Helper()
	path := filepath.Join(shortDir(tb), "app.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln, path
}
