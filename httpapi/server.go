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
// can neither use up notifyd's descriptors nor its memory: with 512 of
// them notifyd is about 27 MiB resident, well within a 64 MiB container
// (docs/PERFORMANCE.md, "Connection cap").
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
// connection, also when Serve never ran. It is idempotent.
func (s *Server) Close() error {
	s.srv.Close()
	s.ln.Close()
	return nil
}

// openConns keeps every open connection in one of three lists by state,
// each in the order the connections entered it, so that the one to close
// when there are too many is at hand; and counts the ones that still owe a
// client an answer: accepted and not yet read (http.StateNew), or with a
// request being answered (http.StateActive).
type openConns struct {
	limit int

	mu       sync.Mutex
	conns    map[net.Conn]*openConn
	idle     connList // between requests: closed first, the stalest first
	fresh    connList // no request read yet
	active   connList // a request being answered: closed last
	busy     int
	draining bool
	done     chan struct{} // closed once draining and none is busy
}

// openConn is one connection in one of openConns' lists.
type openConn struct {
	c          net.Conn
	list       *connList
	prev, next *openConn
}

// connList is a list of connections, the oldest at head.
type connList struct {
	head, tail *openConn
}

func (l *connList) push(e *openConn) {
	e.list, e.prev, e.next = l, l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *connList) remove(e *openConn) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.list, e.prev, e.next = nil, nil, nil
}

// track is the server's ConnState hook.
func (o *openConns) track(c net.Conn, state http.ConnState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.conns == nil {
		o.conns = make(map[net.Conn]*openConn)
	}
	e := o.conns[c]
	var to *connList
	switch state {
	case http.StateNew:
		if len(o.conns) >= o.limit {
			if victim := o.victim(); victim != nil {
				o.forget(victim)
				victim.c.Close() // its own goroutine sees the close and ends
			}
		}
		e = &openConn{c: c}
		o.conns[c] = e
		to = &o.fresh
	case http.StateActive:
		to = &o.active
	case http.StateIdle:
		to = &o.idle
	default: // closed or hijacked
		if e != nil {
			o.forget(e)
		}
		o.check()
		return
	}
	if e == nil {
		return // closed for a newer one
	}
	if e.list != nil {
		if e.list != &o.idle {
			o.busy--
		}
		e.list.remove(e)
	}
	if to != &o.idle {
		o.busy++
	}
	to.push(e)
	o.check()
}

// evictScan is how many of the stalest fresh connections victim looks at.
const evictScan = 64

// victim returns the connection to close for a new one. An idle
// keep-alive connection goes first, the one idle longest; then one that has
// sent no request, the oldest that has none waiting in the kernel either. A
// probe sends its request as it connects, so a flood of idle connections
// cannot push it out before notifyd reads it. A connection whose request is
// being answered goes last. o.mu is held.
func (o *openConns) victim() *openConn {
	if o.idle.head != nil {
		return o.idle.head
	}
	e := o.fresh.head
	for i := 0; e != nil && i < evictScan; i, e = i+1, e.next {
		if !waiting(e.c) {
			return e
		}
	}
	if o.fresh.head != nil {
		return o.fresh.head
	}
	return o.active.head
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

// forget takes e out of its list, the map and the count. o.mu is held.
func (o *openConns) forget(e *openConn) {
	if e.list != &o.idle && e.list != nil {
		o.busy--
	}
	if e.list != nil {
		e.list.remove(e)
	}
	delete(o.conns, e.c)
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
