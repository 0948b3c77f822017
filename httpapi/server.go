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

// Serve answers HTTP on ln with h until ctx is cancelled, then stops
// gracefully: it closes ln, answers every connection it has accepted (each
// answer says "Connection: close"), and returns once all of them are done,
// or after a few seconds, when it cuts the ones still open.
//
// A stop never cuts a probe that reached notifyd. ln may be a copy of a
// socket other processes hold too (a gunicorn master, a new notifyd taking
// over): what notifyd has not accepted stays in the socket's queue for them.
// http.Server.Shutdown alone is not enough: it drops, unanswered, a request
// it reads after the shutdown began, even on a connection it had accepted
// before; a request still in the kernel's buffer when the stop comes is such
// a request.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	var conns openConns
	srv := &http.Server{
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
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	// From here on every answer closes its connection, and connections
	// idle between requests are closed now.
	srv.SetKeepAlivesEnabled(false)
	ln.Close()
	// Serve returns after its last Accept, so every connection it accepted
	// has been counted by then.
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		srv.Close()
		return err
	}
	timer := time.NewTimer(shutdownTimeout)
	defer timer.Stop()
	select {
	case <-conns.drained():
	case <-timer.C:
	}
	open := conns.busyCount()
	// Close, not Shutdown: what is left is idle, or a client that has kept
	// a connection without finishing a request for shutdownTimeout.
	srv.Close()
	if open > 0 {
		return fmt.Errorf("stop answering http: %d connections without a complete request after %s; closed them", open, shutdownTimeout)
	}
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
