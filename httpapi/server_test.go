package httpapi_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/httpapi"
)

// startServe runs Serve on a fresh loopback listener with a handler that
// answers "ok\n", and returns its address, the cancel that stops it and the
// channel its result arrives on. If the test has not taken the result, the
// cleanup does.
func startServe(t *testing.T) (string, context.CancelFunc, chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpapi.NewServer(ln, h, slog.New(slog.DiscardHandler)).Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Error("Serve did not return after its context was cancelled")
		}
	})
	return ln.Addr().String(), cancel, done
}

// dial connects to addr, closed when the test ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(waitLimit))
	t.Cleanup(func() { c.Close() })
	return c
}

// ask sends one GET on c and returns the response, whose body is read.
func ask(t *testing.T, c net.Conn, r *bufio.Reader) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: notifyd\r\n\r\n"); err != nil {
		t.Fatalf("send request: %v", err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

// waitRefused polls until a connection to addr is refused: the listener is
// closed.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		c, err := net.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: %v, want connection refused once Serve stops", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitServe waits for Serve's result and hands it back for the cleanup.
func waitServe(t *testing.T, done chan error) {
	t.Helper()
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Serve did not return after its context was cancelled")
	}
}

// A connection accepted before the stop whose request comes after it is
// answered, not closed unanswered: a probe that reached notifyd is never
// cut.
func TestServeAnswersAcceptedConnectionAtStop(t *testing.T) {
	addr, cancel, done := startServe(t)
	early := dial(t, addr)
	// The kernel hands out connections in the order they were made, so once
	// a later one is answered, the early one has been accepted.
	later := dial(t, addr)
	if resp, body := ask(t, later, bufio.NewReader(later)); resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("before the stop: %d %q, want 200 \"ok\\n\"", resp.StatusCode, body)
	}
	cancel()
	waitRefused(t, addr)
	resp, body := ask(t, early, bufio.NewReader(early))
	if resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("request after the stop on a connection accepted before it: %d %q, want 200 \"ok\\n\"", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Error("answer during the stop lacks Connection: close")
	}
	waitServe(t, done)
}

// A connection idle between requests is closed at the stop, and Serve does
// not wait for it.
func TestServeClosesIdleConnectionAtStop(t *testing.T) {
	addr, cancel, done := startServe(t)
	idle := dial(t, addr)
	r := bufio.NewReader(idle)
	if resp, body := ask(t, idle, r); resp.StatusCode != 200 || body != "ok\n" || resp.Close {
		t.Fatalf("first request: %d %q close=%v, want a kept-alive 200 \"ok\\n\"", resp.StatusCode, body, resp.Close)
	}
	cancel()
	waitServe(t, done)
	if n, err := r.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read from the idle connection after Serve returned: %d bytes, %v; want EOF", n, err)
	}
}

// TestServerServeAndClose answers on a real listener until Close, which
// makes Serve return nil and may be called again.
func TestServerServeAndClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpapi.NewServer(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}), slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()

	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot {
		t.Fatalf("answer %d, want %d", resp.StatusCode, http.StatusTeapot)
	}

	srv.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after Close = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts after Close")
	}
}

// TestServerCapClosesAnIdleConnectionFirst: with its cap of connections
// full, a new connection closes an idle keep-alive connection rather than
// the older one that has not sent its request yet, and is answered itself.
func TestServerCapClosesAnIdleConnectionFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	srv := httpapi.NewServer(ln, h, slog.New(slog.DiscardHandler))
	srv.SetMaxConns(3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := ln.Addr().String()

	silent := dial(t, addr) // the oldest; never sends a request
	idle := []net.Conn{dial(t, addr), dial(t, addr)}
	readers := []*bufio.Reader{bufio.NewReader(idle[0]), bufio.NewReader(idle[1])}
	for i := range idle {
		ask(t, idle[i], readers[i])
	}

	probe := dial(t, addr)
	if resp, body := ask(t, probe, bufio.NewReader(probe)); resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("probe with the cap full = %d %q, want 200 \"ok\\n\"", resp.StatusCode, body)
	}
	// One idle connection was closed for the probe: its read ends at once.
	closed := -1
	for deadline := time.Now().Add(waitLimit); closed < 0 && time.Now().Before(deadline); {
		for i, c := range idle {
			c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			if _, err := readers[i].ReadByte(); errors.Is(err, io.EOF) {
				closed = i
			}
		}
	}
	if closed < 0 {
		t.Fatal("no idle keep-alive connection was closed for the probe")
	}
	kept := idle[1-closed]
	kept.SetDeadline(time.Now().Add(waitLimit))
	ask(t, kept, readers[1-closed])
	if resp, _ := ask(t, silent, bufio.NewReader(silent)); resp.StatusCode != 200 {
		t.Fatalf("the connection that had sent nothing = %d, want 200", resp.StatusCode)
	}
}
