package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
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
	ln  net.Listener
	srv *http.Server
}

// NewServer returns a Server that answers on ln with h. Server errors (a
// client that sent garbage, say) go to log at debug level: an outsider can
// cause them.
func NewServer(ln net.Listener, h http.Handler, log *slog.Logger) *Server {
	return &Server{ln: ln, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// "OPTIONS *" is a health check like any other request.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}
}

// Serve answers until ctx is cancelled, then shuts down gracefully, giving
// requests in flight a few seconds to finish; or until Close. It returns nil
// after either.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(s.ln) }()
	select {
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return err
}

// Close stops the Server at once, closing its listener and every
// connection. It is idempotent.
func (s *Server) Close() error {
	s.srv.Close()
	return nil
}
