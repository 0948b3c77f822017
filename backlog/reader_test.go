package backlog

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReadTCP(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			ap := listenTCP(t, netip.MustParseAddr(ip), 7, false)
			dial(t, "tcp", ap.String(), 5)
			r := newReader(t, ap.String())
			wantQueues(t, readUntil(t, r, 0, 5), []Queue{
				{Addr: ap.String(), Listening: true, Queued: 5, Limit: 7},
			})
		})
	}
}

func TestReadUnix(t *testing.T) {
	path := filepath.Join(shortDir(t), "app.sock")
	listenUnix(t, path, 7)
	dial(t, "unix", path, 3)
	r := newReader(t, "unix:"+path)
	wantQueues(t, readUntil(t, r, 0, 3), []Queue{
		{Addr: "unix:" + path, Listening: true, Queued: 3, Limit: 7},
	})
}

// TestReadUnixFull shows what full means: the kernel admits one connection
// more than the backlog, then refuses a non-blocking connect with EAGAIN.
func TestReadUnixFull(t *testing.T) {
	path := filepath.Join(shortDir(t), "app.sock")
	listenUnix(t, path, 7)
	admitted := 0
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socket: %v", err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		admitted++
		if admitted > 100 {
			t.Fatal("the queue never filled")
		}
	}
	if admitted != 8 {
		t.Errorf("a backlog of 7 admitted %d connections, want 8", admitted)
	}
	qs, err := newReader(t, "unix:"+path).Read()
	if err != nil {
		t.Fatal(err)
	}
	wantQueues(t, qs, []Queue{{Addr: "unix:" + path, Listening: true, Queued: 8, Limit: 7}})
}

// TestReadUnixReplaced: when a socket file is replaced, the old listener
// keeps the name; the one whose file is at the path now is the one counted.
// Here the older listener is the reachable one, so "the newest" would be
// wrong.
func TestReadUnixReplaced(t *testing.T) {
	dir := shortDir(t)
	path, aside := filepath.Join(dir, "app.sock"), filepath.Join(dir, "aside.sock")
	listenUnix(t, path, 7)
	if err := os.Rename(path, aside); err != nil {
		t.Fatal(err)
	}
	listenUnix(t, path, 3)
	if err := os.Rename(aside, path); err != nil {
		t.Fatal(err)
	}
	dial(t, "unix", path, 2)
	r := newReader(t, "unix:"+path)
	wantQueues(t, readUntil(t, r, 0, 2), []Queue{
		{Addr: "unix:" + path, Listening: true, Queued: 2, Limit: 7},
	})
}

func TestReadWildcard(t *testing.T) {
	ap := listenTCP(t, netip.IPv4Unspecified(), 7, false)
	port := ap.Port()
	loop := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
	dial(t, "tcp", loop, 5)
	r := newReader(t, loop, ap.String(), netip.AddrPortFrom(netip.IPv6Loopback(), port).String())
	wantQueues(t, readUntil(t, r, 0, 5), []Queue{
		{Addr: loop, Listening: true, Queued: 5, Limit: 7},
		{Addr: ap.String(), Listening: true, Queued: 5, Limit: 7},
		// An IPv4 socket takes no IPv6 connections.
		{Addr: netip.AddrPortFrom(netip.IPv6Loopback(), port).String()},
	})
}

// TestReadSpecificIsNotWildcard: a listener bound to 127.0.0.1 takes no
// connections to any other address, so the wildcard and 127.0.0.2 do not
// match it.
func TestReadSpecificIsNotWildcard(t *testing.T) {
	ap := listenTCP(t, netip.MustParseAddr("127.0.0.1"), 7, false)
	dial(t, "tcp", ap.String(), 1)
	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), ap.Port()).String()
	wild := netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port()).String()
	r := newReader(t, ap.String(), other, wild)
	wantQueues(t, readUntil(t, r, 0, 1), []Queue{
		{Addr: ap.String(), Listening: true, Queued: 1, Limit: 7},
		{Addr: other},
		{Addr: wild},
	})
}

// TestReadDualStack: a [::] socket that is not IPV6_V6ONLY takes IPv4
// connections too, so it is the listener of 127.0.0.1 and of 0.0.0.0 on its
// port; with IPV6_V6ONLY it is neither.
func TestReadDualStack(t *testing.T) {
	for _, v6only := range []bool{false, true} {
		name := "dual-stack"
		if v6only {
			name = "v6only"
		}
		t.Run(name, func(t *testing.T) {
			ap := listenTCP(t, netip.IPv6Unspecified(), 7, v6only)
			loop4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
			wild4 := netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port()).String()
			loop6 := netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()).String()
			dial(t, "tcp", loop6, 2)
			r := newReader(t, ap.String(), loop6, loop4, wild4)
			qs := readUntil(t, r, 0, 2)
			on := Queue{Listening: true, Queued: 2, Limit: 7}
			want := []Queue{on, on, on, on}
			if v6only {
				want[2], want[3] = Queue{}, Queue{}
			}
			for i, a := range []string{ap.String(), loop6, loop4, wild4} {
				want[i].Addr = a
			}
			wantQueues(t, qs, want)
		})
	}
}

func TestReadNotListening(t *testing.T) {
	// A bound socket that does not listen holds the port for the test.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	tcp := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port)).String()

	dir := shortDir(t)
	missing := "unix:" + filepath.Join(dir, "missing.sock")
	// A Unix socket bound to a path but not listening.
	bound := filepath.Join(dir, "bound.sock")
	ufd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ufd)
	if err := unix.Bind(ufd, &unix.SockaddrUnix{Name: bound}); err != nil {
		t.Fatal(err)
	}

	qs, err := newReader(t, tcp, missing, "unix:"+bound).Read()
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	wantQueues(t, qs, []Queue{{Addr: tcp}, {Addr: missing}, {Addr: "unix:" + bound}})
}

func TestReadNoAddrs(t *testing.T) {
	qs, err := NewReader(nil).Read()
	if err != nil || len(qs) != 0 {
		t.Fatalf("Read() = %v, %v, want no queues", qs, err)
	}
}

// TestReadLimit shows the kernel's cap: listen(2) silently lowers a backlog
// above net.core.somaxconn, and a negative one, to somaxconn.
func TestReadLimit(t *testing.T) {
	max := somaxconn(t)
	for _, tt := range []struct {
		backlog int
		want    uint32
	}{
		{0, 0},
		{1, 1},
		{int(max), max},
		{int(max) + 1, max},
		{-1, max},
	} {
		ap := listenTCP(t, netip.MustParseAddr("127.0.0.1"), tt.backlog, false)
		qs, err := newReader(t, ap.String()).Read()
		if err != nil {
			t.Fatal(err)
		}
		if qs[0].Limit != tt.want {
			t.Errorf("listen(fd, %d): Limit = %d, want %d (somaxconn %d)", tt.backlog, qs[0].Limit, tt.want, max)
		}
	}
}

func TestCached(t *testing.T) {
	ap := listenTCP(t, netip.MustParseAddr("127.0.0.1"), 7, false)
	r := newReader(t, ap.String())
	empty := []Queue{{Addr: ap.String(), Listening: true, Queued: 0, Limit: 7}}
	first, err := r.Cached(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wantQueues(t, first, empty)
	first[0].Queued = 99 // the cache is not the caller's to change

	dial(t, "tcp", ap.String(), 2)
	readUntil(t, r, 0, 2) // Read does not touch the cache

	got, err := r.Cached(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wantQueues(t, got, empty)

	time.Sleep(20 * time.Millisecond)
	got, err = r.Cached(10 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	full := []Queue{{Addr: ap.String(), Listening: true, Queued: 2, Limit: 7}}
	wantQueues(t, got, full)
	got, err = r.Cached(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wantQueues(t, got, full)
}

func TestCachedConcurrent(t *testing.T) {
	ap := listenTCP(t, netip.MustParseAddr("127.0.0.1"), 7, false)
	dial(t, "tcp", ap.String(), 3)
	r := newReader(t, ap.String())
	readUntil(t, r, 0, 3)
	const callers = 32
	var wg sync.WaitGroup
	results := make([][]Queue, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() { results[i], errs[i] = r.Cached(time.Hour) })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		wantQueues(t, results[i], []Queue{{Addr: ap.String(), Listening: true, Queued: 3, Limit: 7}})
	}
}

func BenchmarkReadNetlink(b *testing.B) {
	ap := listenTCP(b, netip.MustParseAddr("127.0.0.1"), 7, false)
	r := newReader(b, ap.String())
	b.ReportAllocs()
	for b.Loop() {
		qs, err := r.Read()
		if err != nil || !qs[0].Listening {
			b.Fatalf("Read() = %v, %v", qs, err)
		}
	}
}

// BenchmarkReadProc is BenchmarkReadNetlink through the /proc/net/tcp
// fallback.
func BenchmarkReadProc(b *testing.B) {
	ap := listenTCP(b, netip.MustParseAddr("127.0.0.1"), 7, false)
	a := mustParse(b, ap.String())
	b.ReportAllocs()
	for b.Loop() {
		ls, err := procListeners(unix.AF_INET)
		if err != nil {
			b.Fatal(err)
		}
		s := &session{tcp: map[int][]tcpListener{unix.AF_INET: ls}, viaProc: map[int]bool{unix.AF_INET: true}}
		q, _, err := s.queue(a)
		if err != nil || !q.Listening {
			b.Fatalf("queue() = %v, %v", q, err)
		}
	}
}
