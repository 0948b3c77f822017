package protocol

import (
	"context"
	"errors"
	"os"
)

// keep re-creates the socket file whenever it is removed from under notifyd,
// by a cleanup job for example, so that workers can reach it again, with
// the mode and group it was made with. A socket without a file of its own
// (abstract, or passed by systemd) is not watched: systemd's socket is
// re-created by restarting its unit. keep returns when ctx is cancelled or
// the file can no longer be watched; the server goes on reading either way.
func (s *Server) keep(ctx context.Context, first *Conn) {
	w, err := watchPath(first.path)
	if err != nil {
		s.log.Warn("not watching the notify socket file; if it is removed, restart notifyd", "error", err)
		return
	}
	defer w.Close()
	defer context.AfterFunc(ctx, func() { w.Close() })()
	for current := first; ; {
		// The watch follows the file at the path, so it is armed again
		// before each check: a change after the check is never missed.
		err := w.Arm()
		// Serve cancels ctx before it closes the socket and removes its
		// file, so a file gone at shutdown is never taken for one removed
		// from under notifyd.
		if err == nil && !current.present() && ctx.Err() == nil {
			if next := s.recreate(current); next != current {
				current = next
				continue // watch the new socket's file
			}
		}
		if err == nil {
			err = w.Wait()
		}
		switch {
		case ctx.Err() != nil || errors.Is(err, os.ErrClosed):
			return
		case errors.Is(err, errDirGone):
			s.log.Error("the notify socket's directory is gone; restart notifyd once it is back", "socket", first.path)
			return
		case err != nil:
			s.log.Error("stopped watching the notify socket file; if it is removed, restart notifyd", "error", err)
			return
		}
	}
}

// recreate binds a new socket at current's path and makes it the one the
// server reads, while it goes on reading current too for senders that
// connected before. It returns the socket now at the path, or current when
// that failed.
func (s *Server) recreate(current *Conn) *Conn {
	s.log.Warn("notify socket file removed; re-creating it", "socket", current.path)
	next, err := Listen(current.cfg)
	if err != nil {
		s.log.Error("notify socket not re-created; workers cannot reach notifyd until it is", "socket", current.path, "error", err)
		return current
	}
	s.replace(next)
	s.log.Info("notify socket re-created", "socket", current.path)
	return next
}
