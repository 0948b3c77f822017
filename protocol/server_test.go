package protocol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/internal/proctest"
)

// Shared with the other packages' tests: internal/proctest.
var (
	sockDir = proctest.ShortDir
)

// waitLimit bounds every wait for the server: proctest.Patience.
const waitLimit = proctest.Patience

type record struct {
	m    Message
	cred Credentials
}

// recorder is a Handler that keeps every message it accepts, in order, and
// rejects the messages about the pids in reject with the given error.
type recorder struct {
	reject map[int]error

	mu  sync.Mutex
	got []record
}

func (r *recorder) HandleMessage(m Message, sender Credentials) error {
	if err, ok := r.reject[m.PID]; ok {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, record{m, withoutPidfd(sender)})
	return nil
}

// withoutPidfd checks that a sender's pidfd, where the kernel sent one, is a
// pidfd of the sender's own process, and returns the credentials without it
// so that they compare equal to self().
func withoutPidfd(c Credentials) Credentials {
	if c.PIDFD > 0 {
		if got := pidOfPidfd(c.PIDFD); got != c.PID {
			c.PID = -got // shows up as a mismatch in the caller's comparison
		}
		c.PIDFD = 0
	}
	return c
}

// pidOfPidfd reads the pid a pidfd refers to from /proc/self/fdinfo.
func pidOfPidfd(fd int) int {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(v))
			return pid
		}
	}
	return 0
}

func (r *recorder) records() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *recorder) check(t *testing.T, want []record) {
	t.Helper()
	got := r.records()
	if len(got) != len(want) {
		t.Errorf("handler got %d messages, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if !sameMessage(got[i].m, want[i].m) || got[i].cred != want[i].cred {
			t.Errorf("message %d = %s from %+v, want %s from %+v",
				i, describe(got[i].m), got[i].cred, describe(want[i].m), want[i].cred)
		}
	}
}

func self() Credentials {
	return Credentials{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid()}
}

// serve runs a Server with handler h on a new socket until the test ends,
// and checks then that Serve returns nil.
func serve(t *testing.T, h Handler) (*Server, string) {
	t.Helper()
	path := filepath.Join(sockDir(t), "n.sock")
	conn, err := Listen(ListenConfig{Path: path, Mode: 0o660, GID: -1})
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	srv := NewServer(conn, h, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		case <-time.After(waitLimit):
			t.Errorf("Serve did not return within %s of cancel", waitLimit)
		}
		conn.Close()
	})
	return srv, path
}

func dial(t *testing.T, path string) *Client {
	t.Helper()
	c, err := Dial(path)
	if err != nil {
		t.Fatalf("Dial(%q): %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *Client, payload string, fds ...int) {
	t.Helper()
	if err := c.Send([]byte(payload), waitLimit, fds...); err != nil {
		t.Fatalf("Send(%.40q): %v", payload, err)
	}
}

func barrier(t *testing.T, c *Client) {
	t.Helper()
	if err := c.Barrier(waitLimit); err != nil {
		t.Fatalf("Barrier: %v", err)
	}
}

// plainSend sends payload from an ordinary blocking datagram socket that
// attaches no credentials of its own, with fds when there are any.
func plainSend(t *testing.T, path, payload string, fds ...int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if n, err := unix.SendmsgN(fd, []byte(payload), oob, nil, 0); err != nil || n != len(payload) {
		t.Fatalf("send %.40q: sent %d bytes, %v", payload, n, err)
	}
}

// pipes returns the read and write ends of n new pipes. The read ends are
// closed when the test ends; the caller closes the write ends.
func pipes(t *testing.T, n int) (r, w []int) {
	t.Helper()
	for range n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatalf("pipe: %v", err)
		}
		t.Cleanup(func() { unix.Close(p[0]) })
		r, w = append(r, p[0]), append(w, p[1])
	}
	return r, w
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// hungUp reports whether every write end of the pipe whose read end is fd is
// closed: poll says POLLHUP and a read finds end of file.
func hungUp(t *testing.T, fd int) bool {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	if n == 0 || p[0].Revents&unix.POLLHUP == 0 {
		return false
	}
	var b [1]byte
	got, err := unix.Read(fd, b[:])
	if got != 0 || err != nil {
		t.Fatalf("read from a hung-up pipe = %d, %v; want end of file", got, err)
	}
	return true
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// checkCounts compares srv.Counts() with want, where a zero in want stands
// for a result that must not be counted at all.
func checkCounts(t *testing.T, srv *Server, want map[string]uint64) {
	t.Helper()
	want = maps.Clone(want)
	maps.DeleteFunc(want, func(_ string, n uint64) bool { return n == 0 })
	if got := srv.Counts(); !maps.Equal(got, want) {
		t.Errorf("Counts() = %v, want %v", got, want)
	}
}

func TestServerDelivers(t *testing.T) {
	tests := []struct {
		name    string
		plain   bool // send from a plain socket instead of a Client
		payload string
		want    Message
	}{
		{name: "client newline form", payload: "READY=1\nSTATUS=up and running", want: Message{Lifecycle: Ready, Status: strptr("up and running")}},
		{name: "client one-line form with pid", payload: "STOPPING=1 PID=4321", want: Message{Lifecycle: Stopping, PID: 4321}},
		{name: "client trailing NUL", payload: "WATCHDOG=1\x00", want: Message{Watchdog: true}},
		{name: "client unknown keys only", payload: "FDSTORE=1\nFDNAME=x", want: Message{}},
		{name: "client empty datagram", payload: "", want: Message{}},
		{name: "plain socket ready", plain: true, payload: "READY=1", want: Message{Lifecycle: Ready}},
		{name: "plain socket failure", plain: true, payload: "ERRNO=12\nMAINPID=99", want: Message{PID: 99, Failed: true, Errno: 12}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recorder{}
			srv, path := serve(t, h)
			c := dial(t, path)
			if tt.plain {
				plainSend(t, path, tt.payload)
			} else {
				send(t, c, tt.payload)
			}
			barrier(t, c)
			h.check(t, []record{{tt.want, self()}})
			checkCounts(t, srv, map[string]uint64{"accepted": 1, "barrier": 1})
		})
	}
}

func TestServerBarrierWaitsForEarlierMessages(t *testing.T) {
	tests := []struct {
		name  string
		n     int
		plain bool
	}{
		{name: "none", n: 0},
		{name: "one", n: 1},
		{name: "more than the kernel queue holds", n: 200},
		{name: "from another socket", n: 50, plain: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recorder{}
			srv, path := serve(t, h)
			c := dial(t, path)
			var want []record
			for i := range tt.n {
				payload := "STATUS=" + strconv.Itoa(i)
				if tt.plain {
					plainSend(t, path, payload)
				} else {
					send(t, c, payload)
				}
				want = append(want, record{Message{Status: strptr(strconv.Itoa(i))}, self()})
			}
			barrier(t, c)
			// The handler records synchronously, so all must be there now.
			h.check(t, want)
			checkCounts(t, srv, map[string]uint64{"accepted": uint64(tt.n), "barrier": 1})
		})
	}
}

func TestServerClosesDescriptors(t *testing.T) {
	denied := NewRejection("denied", "denied by the test handler")
	tests := []struct {
		name    string
		payload string
		fds     int
		plain   bool
		result  string // the count it must land in
		handled bool   // whether the handler sees it
	}{
		{name: "barrier without descriptors", payload: "BARRIER=1", fds: 0, result: "bad_barrier"},
		{name: "barrier with two descriptors", payload: "BARRIER=1", fds: 2, result: "bad_barrier"},
		{name: "barrier with another key and one descriptor", payload: "BARRIER=1\nREADY=1", fds: 1, result: "bad_barrier"},
		{name: "barrier with one descriptor", payload: "BARRIER=1", fds: 1, result: "barrier"},
		{name: "barrier with one descriptor from a plain socket", payload: "BARRIER=1", fds: 1, plain: true, result: "barrier"},
		{name: "ready with one descriptor", payload: "READY=1", fds: 1, result: "accepted", handled: true},
		{name: "ready with three descriptors from a plain socket", payload: "READY=1", fds: 3, plain: true, result: "accepted", handled: true},
		{name: "malformed with a descriptor", payload: "hello", fds: 1, result: "malformed"},
		{name: "bad value with descriptors", payload: "READY=yes", fds: 2, result: "bad_value"},
		{name: "too large with a descriptor", payload: statusOfLen(t, 5000), fds: 1, result: "too_large"},
		{name: "handler rejection with a descriptor", payload: "READY=1\nPID=666", fds: 1, result: "denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recorder{reject: map[int]error{666: fmt.Errorf("%w: pid 666", denied)}}
			srv, path := serve(t, h)
			c := dial(t, path)
			r, w := pipes(t, tt.fds)
			for _, fd := range r {
				if hungUp(t, fd) {
					t.Fatalf("pipe %d hung up while its write end is open", fd)
				}
			}
			if tt.plain {
				plainSend(t, path, tt.payload, w...)
			} else {
				send(t, c, tt.payload, w...)
			}
			closeAll(w)
			barrier(t, c)
			for i, fd := range r {
				if !hungUp(t, fd) {
					t.Errorf("descriptor %d of %d is still open after the server handled the datagram", i+1, len(r))
				}
			}
			want := map[string]uint64{"barrier": 1}
			want[tt.result]++
			checkCounts(t, srv, want)
			var records []record
			if tt.handled {
				records = []record{{Message{Lifecycle: Ready}, self()}}
			}
			h.check(t, records)
		})
	}
}

func TestServerDatagramSize(t *testing.T) {
	tests := []struct {
		name   string
		size   int
		result string
	}{
		{name: "4096 bytes", size: 4096, result: "accepted"},
		{name: "4097 bytes", size: 4097, result: "too_large"},
		{name: "5000 bytes", size: 5000, result: "too_large"},
		{name: "65000 bytes", size: 65000, result: "too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recorder{}
			srv, path := serve(t, h)
			c := dial(t, path)
			payload := statusOfLen(t, tt.size)
			send(t, c, payload)
			barrier(t, c)
			checkCounts(t, srv, map[string]uint64{tt.result: 1, "barrier": 1})
			var want []record
			if tt.result == "accepted" {
				want = []record{{Message{Status: strptr(payload[len("STATUS="):])}, self()}}
			}
			h.check(t, want)
		})
	}
}

func TestServerCounts(t *testing.T) {
	denied := NewRejection("denied", "denied by the test handler")
	h := &recorder{reject: map[int]error{
		666: fmt.Errorf("%w: pid 666", denied),
		667: errors.New("an error that is no Rejection"),
	}}
	srv, path := serve(t, h)
	c := dial(t, path)
	checkCounts(t, srv, map[string]uint64{})

	for _, payload := range []string{
		"READY=1",
		"READY=2",
		"WATCHDOG=1",
		"PID=1\nMAINPID=2",
		"junk",
		"READY=1\x00\x00",
		statusOfLen(t, 5000),
		"BARRIER=1",
		"READY=1\nPID=666",
		"READY=1\nPID=667",
		"FOO=1",
		"STATUS=\x1b[2J",
		"READY=1\nREADY=1\nSTOPPING=1",
	} {
		send(t, c, payload)
	}
	r, w := pipes(t, 1)
	send(t, c, "BARRIER=1\nSTATUS=x", w...)
	closeAll(w)
	plainSend(t, path, "RELOADING=1")
	barrier(t, c)
	barrier(t, c)

	want := map[string]uint64{
		"accepted":    4,
		"barrier":     2,
		"bad_value":   2,
		"conflict":    2,
		"malformed":   1,
		"nul_byte":    1,
		"too_large":   1,
		"bad_barrier": 2,
		"denied":      1,
		"error":       1,
	}
	checkCounts(t, srv, want)
	if !hungUp(t, r[0]) {
		t.Error("descriptor of the rejected barrier is still open")
	}
	h.check(t, []record{
		{Message{Lifecycle: Ready}, self()},
		{Message{Watchdog: true}, self()},
		{Message{}, self()},
		{Message{Lifecycle: Reloading}, self()},
	})

	got := srv.Counts()
	got["accepted"] = 1000
	delete(got, "barrier")
	checkCounts(t, srv, want)
}

func TestServerKeepsNoDescriptors(t *testing.T) {
	h := &recorder{reject: map[int]error{666: errors.New("rejected")}}
	_, path := serve(t, h)
	c := dial(t, path)
	r, w := pipes(t, 2)
	barrier(t, c) // the server's first read is behind it

	before := openFDs(t)
	payloads := []string{"READY=1", "BARRIER=1", "hello", "READY=1\nPID=666", "BARRIER=1\nSTATUS=x", statusOfLen(t, 5000)}
	var want []record
	for i := range 1000 {
		payload := payloads[i%len(payloads)]
		if payload == "READY=1" {
			want = append(want, record{Message{Lifecycle: Ready}, self()})
		}
		fds := w[:1+i%2]
		if i%3 == 0 {
			plainSend(t, path, payload, fds...)
		} else {
			send(t, c, payload, fds...)
		}
	}
	barrier(t, c)
	after := openFDs(t)
	if after != before {
		t.Errorf("%d open descriptors after 1000 datagrams with descriptors, %d before", after, before)
	}

	closeAll(w)
	barrier(t, c)
	for i, fd := range r {
		if !hungUp(t, fd) {
			t.Errorf("pipe %d still has an open write end", i)
		}
	}
	h.check(t, want)
}

// TestServerInheritedSocket plays socket activation: datagrams queued before
// SO_PASSCRED was set carry credentials only when the sender attached them.
func TestServerInheritedSocket(t *testing.T) {
	path := filepath.Join(sockDir(t), "n.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inherited")
	defer f.Close()

	plainSend(t, path, "READY=1")
	c := dial(t, path)
	send(t, c, "STATUS=explicit credentials")

	conn, err := FileConn(f)
	if err != nil {
		t.Fatalf("FileConn: %v", err)
	}
	h := &recorder{}
	srv := NewServer(conn, h, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	plainSend(t, path, "STOPPING=1")
	barrier(t, c)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("Serve did not return within %s of cancel", waitLimit)
	}
	conn.Close()

	checkCounts(t, srv, map[string]uint64{"no_credentials": 1, "accepted": 2, "barrier": 1})
	h.check(t, []record{
		{Message{Status: strptr("explicit credentials")}, self()},
		{Message{Lifecycle: Stopping}, self()},
	})
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("inherited socket file after Close: %v, %v; want it left in place", fi, err)
	}
}

func TestFileConnRefusesNonUnix(t *testing.T) {
	tests := []struct {
		name string
		open func() (interface{ File() (*os.File, error) }, func(), error)
	}{
		{name: "udp", open: func() (interface{ File() (*os.File, error) }, func(), error) {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return nil, nil, err
			}
			return c, func() { c.Close() }, nil
		}},
		{name: "tcp listener", open: func() (interface{ File() (*os.File, error) }, func(), error) {
			l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return nil, nil, err
			}
			return l, func() { l.Close() }, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, closeSocket, err := tt.open()
			if err != nil {
				t.Fatal(err)
			}
			defer closeSocket()
			f, err := s.File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			conn, err := FileConn(f)
			if err == nil {
				conn.Close()
				t.Fatalf("FileConn accepted a %s socket", tt.name)
			}
			if conn != nil {
				t.Errorf("FileConn returned a Conn with its error %v", err)
			}
		})
	}
}

// TestServerKeepsItsSocket removes the socket file under a serving Server,
// which binds a new socket at the path: a sender connected to the replaced
// socket is still served until the next re-creation closes that socket, and
// the new one serves senders that dial the path afresh.
func TestServerKeepsItsSocket(t *testing.T) {
	rec := &recorder{}
	_, path := serve(t, rec)
	early := dial(t, path)

	replace := func() {
		t.Helper()
		var before unix.Stat_t
		if err := unix.Stat(path, &before); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		proctest.Eventually(t, "a new socket at "+path, func() bool {
			var st unix.Stat_t
			return unix.Stat(path, &st) == nil && st.Ino != before.Ino && st.Mode&unix.S_IFMT == unix.S_IFSOCK
		})
	}
	replace()
	late := dial(t, path)
	send(t, early, "STATUS=early")
	barrier(t, early)
	send(t, late, "STATUS=late")
	barrier(t, late)
	rec.check(t, []record{
		{Message{Status: strptr("early")}, self()},
		{Message{Status: strptr("late")}, self()},
	})

	replace() // closes the first socket
	// The newest socket is read only once the replacement has closed the
	// first: its file appears a moment before.
	barrier(t, dial(t, path))
	if err := early.Send([]byte("STATUS=too late"), waitLimit); err == nil {
		t.Fatal("a send to the socket replaced twice succeeded; it should have been closed")
	}
	send(t, late, "STATUS=late again")
	barrier(t, late)
	if got := len(rec.records()); got != 3 {
		t.Fatalf("%d messages delivered, want 3", got)
	}
}

// TestServerClose: Close stops a serving Server, which removes its socket
// file and returns nil, and a Server closed before Serve returns at once.
// Close may be called again.
func TestServerClose(t *testing.T) {
	for _, before := range []bool{false, true} {
		name := map[bool]string{false: "while serving", true: "before Serve"}[before]
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(sockDir(t), "n.sock")
			conn, err := Listen(ListenConfig{Path: path, Mode: 0o660, GID: -1})
			if err != nil {
				t.Fatal(err)
			}
			srv := NewServer(conn, &recorder{}, slog.New(slog.DiscardHandler))
			if before {
				srv.Close()
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(context.Background()) }()
			if !before {
				barrier(t, dial(t, path)) // serving
				srv.Close()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Serve after Close = %v, want nil", err)
				}
			case <-time.After(waitLimit):
				t.Fatal("Serve did not return after Close")
			}
			if err := srv.Close(); err != nil {
				t.Fatalf("second Close = %v", err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("socket file after Close: %v, want it removed", err)
			}
		})
	}
}
