//go:build linux

package protocol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handler applies one accepted message. Serve makes one call at a time, in
// each socket's arrival order; a BARRIER=1 is acknowledged only after every
// call before it has returned. A non-nil error rejects the message: it must
// then have changed nothing.
type Handler interface {
	HandleMessage(m Message, sender Credentials) error
}

// Syncer is a Handler whose changes reach beyond memory, such as the
// registry's state files. A BARRIER=1 is acknowledged only after Sync has
// returned, so the acknowledgement covers those too.
type Syncer interface {
	Sync()
}

// Server reads datagrams from a Conn and hands the valid ones to a Handler.
// It keeps a socket file it created: when the file is removed, the server
// binds a new socket at the path and reads both, the old one for senders
// that connected to it earlier, until the next re-creation.
type Server struct {
	handler Handler
	log     *slog.Logger
	limiter *LogLimiter
	closer  *closer    // closes received descriptors off the reading goroutines, while Serve runs
	apply1  sync.Mutex // held while one datagram is applied
	readers sync.WaitGroup
	failed  chan error    // a read error of the current socket
	closing chan struct{} // closed by Close
	close1  sync.Once

	mu      sync.Mutex
	conn    *Conn // the socket at the path
	retired *Conn // the one before it, or nil
	serving bool  // Serve has started reading
	stopped bool
	counts  map[string]uint64 // by result: "accepted", "barrier" or a rejection reason
}

// NewServer returns a Server that reads conn and applies messages to h.
func NewServer(conn *Conn, h Handler, log *slog.Logger) *Server {
	return &Server{
		conn:    conn,
		failed:  make(chan error, 1),
		closing: make(chan struct{}),
		handler: h,
		log:     log,
		limiter: NewLogLimiter(5, time.Second),
		counts:  make(map[string]uint64),
	}
}

// Serve reads and applies datagrams until ctx is cancelled or Close is
// called, then closes the sockets and removes the socket file. Meanwhile it
// re-creates the socket file whenever it is removed. It returns nil after a
// cancellation or Close, and the read error of the current socket otherwise.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.serving = true
	s.closer = newCloser()
	s.start(s.conn)
	if s.retired != nil { // replaced before Serve began
		s.start(s.retired)
	}
	if first := s.conn; first.path != "" {
		s.readers.Go(func() { s.keep(ctx, first) })
	}
	s.mu.Unlock()
	var err error
	select {
	case <-ctx.Done():
	case <-s.closing:
	case err = <-s.failed:
	}
	cancel() // the keeper first: it must not re-create what is closed here
	s.mu.Lock()
	s.stopped = true
	s.conn.Close()
	if s.retired != nil {
		s.retired.Close()
	}
	s.mu.Unlock()
	s.readers.Wait()
	s.closer.stop()
	return err
}

// Close stops Serve, or makes it return at once if it has not begun, and
// closes the sockets. It is idempotent.
func (s *Server) Close() error {
	s.close1.Do(func() { close(s.closing) })
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.serving {
		s.stopped = true
		s.conn.Close()
		if s.retired != nil {
			s.retired.Close()
		}
	}
	return nil
}

// replace makes c the socket at the path. The one it replaces is kept and
// read until the next replace; the one before that is closed. replace closes
// c at once if Serve has already returned; before Serve has begun, it only
// records c for Serve to read.
func (s *Server) replace(c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		c.Close()
		return
	}
	if s.retired != nil {
		s.retired.Close()
	}
	s.retired, s.conn = s.conn, c
	if s.serving {
		s.start(c)
	}
}

// start reads c in a goroutine of its own. The caller holds s.mu.
func (s *Server) start(c *Conn) {
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		s.read(c)
	}()
}

// read applies c's datagrams until c is closed or fails.
func (s *Server) read(c *Conn) {
	for {
		d, err := c.Read()
		if err == nil {
			s.handle(d)
			continue
		}
		s.mu.Lock()
		current := c == s.conn && !s.stopped
		s.mu.Unlock()
		closed := errors.Is(err, net.ErrClosed)
		switch {
		case current:
			if !closed {
				err = fmt.Errorf("read notify socket: %w", err)
			} else {
				err = nil // closed under Serve: stop as if cancelled
			}
			select {
			case s.failed <- err:
			default:
			}
		case !closed:
			s.log.Warn("stopped reading the notify socket that was replaced", "error", err)
		}
		return
	}
}

// handle applies one datagram and closes its descriptors whatever happens:
// the sender's pidfd here, as that close cannot block, and the passed ones
// on the closer. A barrier is acknowledged by the close of its descriptor,
// so that comes after the message is applied, as it must.
func (s *Server) handle(d Datagram) {
	defer s.release(&d)
	s.apply1.Lock()
	result, err := s.apply(&d)
	s.apply1.Unlock()
	if err != nil {
		result = ReasonOf(err)
		s.reject(d, err)
	}
	s.mu.Lock()
	s.counts[result]++
	s.mu.Unlock()
}

// release closes what came with d. A descriptor the handler keeps must
// have been taken out of d.FDs (or set to -1) by then.
func (s *Server) release(d *Datagram) {
	if d.pidfd > 0 {
		unix.Close(d.pidfd)
		d.pidfd = 0
	}
	s.closer.close(d.FDs)
	d.FDs = nil
}

func (s *Server) apply(d *Datagram) (string, error) {
	switch {
	case d.Truncated:
		return "", ErrTooLarge
	case d.ControlTruncated:
		return "", ErrControl
	}
	m, err := Parse(d.Data)
	if err != nil {
		return "", err
	}
	if m.Barrier {
		// Everything before this datagram has been applied: the caller's
		// Close of the descriptor is the acknowledgement.
		if len(d.FDs) != 1 {
			return "", fmt.Errorf("%w: it came with %d", ErrBarrier, len(d.FDs))
		}
		if s, ok := s.handler.(Syncer); ok {
			s.Sync()
		}
		return "barrier", nil
	}
	// The kernel translates the sender's pid into notifyd's pid namespace,
	// and gives 0 where it has no number there.
	if d.Cred == nil || d.Cred.PID == 0 {
		return "", ErrNoCredentials
	}
	if err := s.handler.HandleMessage(m, *d.Cred); err != nil {
		return "", err
	}
	return "accepted", nil
}

func (s *Server) reject(d Datagram, err error) {
	attrs := []any{"reason", ReasonOf(err), "error", err}
	if d.Cred != nil {
		attrs = append(attrs, "sender_pid", d.Cred.PID, "sender_uid", d.Cred.UID)
	}
	s.limiter.Log(s.log, slog.LevelWarn, "rejected notification", attrs...)
}

// Counts returns how many datagrams ended in each result: "accepted",
// "barrier", or a rejection reason such as "bad_value".
func (s *Server) Counts() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// LogLimiter lets through at most Burst log lines every Every, and counts
// the ones it held back so that the next line can say how many there were.
// Every line an outsider can cause goes through one. It is safe for
// concurrent use; the zero value lets nothing through.
type LogLimiter struct {
	Burst int
	Every time.Duration

	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

// NewLogLimiter returns a LogLimiter of burst lines every interval.
func NewLogLimiter(burst int, every time.Duration) *LogLimiter {
	return &LogLimiter{Burst: burst, Every: every}
}

// Allow reports whether a line may be logged now, and how many were held
// back since the last one that was.
func (l *LogLimiter) Allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= l.Every {
		l.start, l.n = now, 0
	}
	if l.n >= l.Burst {
		l.suppressed++
		return false, 0
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// Log writes one line at level through the limiter, with a "suppressed"
// attribute when lines were held back before it.
func (l *LogLimiter) Log(log *slog.Logger, level slog.Level, msg string, attrs ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := l.Allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	log.Log(context.Background(), level, msg, attrs...)
}
