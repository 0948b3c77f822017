package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server timeouts. A health check is one small request and one small
// answer; a client that takes longer than this is broken or hostile.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	shutdownTimeout   = 5 * time.Second
)

// Server answers HTTP on one listener with notifyd's server settings: the
// timeouts above, and every "OPTIONS *" treated as a request like any other.
type Server struct {
	ln    net.Listener
	srv   *http.Server
	conns *openConns
}

// NewServer returns a Server that answers on ln with h. Server errors (a
// client that sent garbage, say) go to log at debug level: an outsider can
// cause them.
func NewServer(ln net.Listener, h http.Handler, log *slog.Logger) *Server {
	conns := &openConns{}
	return &Server{ln: ln, conns: conns, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
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

// openConns counts the connections that still owe a client an answer:
// accepted and not yet read (http.StateNew), or with a request being
// answered (http.StateActive).
type openConns struct {
	mu       sync.Mutex
	busy     map[net.Conn]struct{}
	draining bool
	done     chan struct{} // closed once draining and none is busy
}

// track is the server's ConnState hook.
func (o *openConns) track(c net.Conn, state http.ConnState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.busy == nil {
		o.busy = make(map[net.Conn]struct{})
	}
	switch state {
	case http.StateNew, http.StateActive:
		o.busy[c] = struct{}{}
	default: // idle, hijacked or closed: nothing owed
		delete(o.busy, c)
	}
	o.check()
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
	return len(o.busy)
}

// check closes done when draining has begun and nothing is busy. o.mu is
// held.
func (o *openConns) check() {
	if !o.draining || len(o.busy) > 0 {
		return
	}
	select {
	case <-o.done:
	default:
		close(o.done)
	}
}
