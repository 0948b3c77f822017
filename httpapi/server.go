package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Server timeouts. A health check is one small request and one small
// answer; a client that takes longer than this is broken or hostile.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	maxHeaderBytes    = 16 << 10
	shutdownTimeout   = 5 * time.Second
)

// Keep-alive connections are cheap for a client to hold and cost notifyd
// about 20 KB each (a goroutine and its read and write buffers), so the
// number it keeps open is bounded, and an idle one is kept only briefly.
// A probe, or a scrape every 5 s or more, reconnects for a handshake on
// loopback or a LAN; in exchange, connections a client opens and leaves
// can neither use up notifyd's descriptors nor its memory: 512 of them
// cost about 10 MiB, well within a 64 MiB container (docs/PERFORMANCE.md,
// "Connection cap").
const (
	// MaxConns is how many HTTP connections a Server keeps open. Once
	// there are that many, each new one closes the connection that has
	// waited longest since it last did anything: an idle keep-alive one,
	// or one that never sent its request. A probe is answered within
	// milliseconds of its connection, so it is never that one unless
	// MaxConns connections moved after it.
	MaxConns = 512
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request.
	IdleTimeout = 5 * time.Second
)

// Server answers HTTP on one listener with notifyd's server settings: the
// timeouts above, and every "OPTIONS *" treated as a request like any other.
type Server struct {
	ln    net.Listener
	srv   *http.Server
	conns *openConns
}

// SetMaxConns changes how many connections s keeps open (MaxConns by
// default). Call it before Serve.
func (s *Server) SetMaxConns(n int) { s.conns.limit = n }

// NewServer returns a Server that answers on ln with h. Server errors (a
// client that sent garbage, say) go to log at debug level: an outsider can
// cause them.
func NewServer(ln net.Listener, h http.Handler, log *slog.Logger) *Server {
	conns := &openConns{limit: MaxConns}
	return &Server{ln: ln, conns: conns, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// "OPTIONS *" is a health check like any other request.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnState:                    conns.track,
	}}
}

// Serve answers until Close, and returns nil then; or until ctx is
// cancelled, and then stops gracefully: it closes its listener, answers
// every connection it has accepted (each answer says "Connection: close"),
// and returns once all of them are done, or after a few seconds, when it
// cuts the ones still open.
//
// A stop never cuts a probe that reached notifyd. The listener may be a
// copy of a socket other processes hold too (a gunicorn master, a new
// notifyd taking over): what notifyd has not accepted stays in the socket's
// queue for them. http.Server.Shutdown alone is not enough: it drops,
// unanswered, a request it reads after the shutdown began, even on a
// connection it had accepted before; a request still in the kernel's buffer
// when the stop comes is such a request.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(s.ln) }()
	select {
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil // Close
		}
		return err
	case <-ctx.Done():
	}
	// From here on every answer closes its connection, and connections
	// idle between requests are closed now.
	s.srv.SetKeepAlivesEnabled(false)
	s.ln.Close()
	// Serve returns after its last Accept, so every connection it accepted
	// has been counted by then.
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		s.srv.Close()
		if errors.Is(err, http.ErrServerClosed) {
			return nil // Close came first
		}
		return err
	}
	timer := time.NewTimer(shutdownTimeout)
	defer timer.Stop()
	select {
	case <-s.conns.drained():
	case <-timer.C:
	}
	open := s.conns.busyCount()
	// Close, not Shutdown: what is left is idle, or a client that has kept
	// a connection without finishing a request for shutdownTimeout.
	s.srv.Close()
	if open > 0 {
		return fmt.Errorf("stop answering http: %d connections without a complete request after %s; closed them", open, shutdownTimeout)
	}
	return nil
}

// Close stops the Server at once, closing its listener and every
// connection. It is idempotent.
func (s *Server) Close() error {
	s.srv.Close()
	return nil
}

// openConns keeps every open connection in the order of its last change of
// state, the stalest first, so that the one to close when there are too
// many is at hand; and counts the ones that still owe a client an answer:
// accepted and not yet read (http.StateNew), or with a request being
// answered (http.StateActive).
type openConns struct {
	limit int

	mu         sync.Mutex
	conns      map[net.Conn]*openConn
	head, tail *openConn // the stalest, the freshest
	busy       int
	draining   bool
	done       chan struct{} // closed once draining and none is busy
}

// openConn is one connection in openConns' list.
type openConn struct {
	c          net.Conn
	busy       bool
	prev, next *openConn
}

// track is the server's ConnState hook.
func (o *openConns) track(c net.Conn, state http.ConnState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.conns == nil {
		o.conns = make(map[net.Conn]*openConn)
	}
	e := o.conns[c]
	switch state {
	case http.StateNew:
		if len(o.conns) >= o.limit && o.head != nil {
			stalest := o.stalest()
			o.forget(stalest)
			stalest.c.Close() // its own goroutine sees the close and ends
		}
		e = &openConn{c: c}
		o.conns[c] = e
	case http.StateActive, http.StateIdle:
		if e == nil {
			return // closed for a newer one
		}
		o.unlink(e)
	default: // closed or hijacked
		if e != nil {
			o.forget(e)
		}
		o.check()
		return
	}
	busy := state != http.StateIdle
	switch {
	case busy && !e.busy:
		o.busy++
	case !busy && e.busy:
		o.busy--
	}
	e.busy = busy
	e.prev, e.next = o.tail, nil // append: the freshest
	if o.tail != nil {
		o.tail.next = e
	} else {
		o.head = e
	}
	o.tail = e
	o.check()
}

// evictScan is how many of the stalest connections stalest looks at.
const evictScan = 64

// stalest returns the connection to close for a new one: the stalest that
// has no request waiting in the kernel. A probe's request is there from
// the moment it connects, so a flood of connections that reconnect as fast
// as notifyd closes them cannot push it out before notifyd reads it. When
// every one it looks at has data waiting, it is the stalest of all. o.mu
// is held.
func (o *openConns) stalest() *openConn {
	e := o.head
	for i := 0; e != nil && i < evictScan; i, e = i+1, e.next {
		if !waiting(e.c) {
			return e
		}
	}
	return o.head
}

// waiting reports whether c has bytes the kernel received and notifyd has
// not read yet.
func waiting(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}

// forget takes e out of the list and the count. o.mu is held.
func (o *openConns) forget(e *openConn) {
	o.unlink(e)
	delete(o.conns, e.c)
	if e.busy {
		o.busy--
	}
}

// unlink takes e out of the list. o.mu is held.
func (o *openConns) unlink(e *openConn) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		o.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		o.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// drained returns a channel closed once no connection is busy.
func (o *openConns) drained() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.draining = true
	if o.done == nil {
		o.done = make(chan struct{})
	}
	o.check()
	return o.done
}

func (o *openConns) busyCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.busy
}

// check closes done when draining has begun and nothing is busy. o.mu is
// held.
func (o *openConns) check() {
	if !o.draining || o.busy > 0 {
		return
	}
	select {
	case <-o.done:
	default:
		close(o.done)
	}
}
