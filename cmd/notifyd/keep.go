package main

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"github.com/notifyd/notifyd/protocol"
)

// keepSocket re-creates the notify socket file whenever it is removed from
// under notifyd, by a cleanup job for example, so that workers can reach it
// again. A socket without a file of its own (abstract, or passed by systemd)
// is not watched: systemd's socket is re-created by restarting its unit. It
// returns when ctx is cancelled, never sooner: the rest of notifyd goes on
// whether or not the file can be watched.
func keepSocket(srv *protocol.Server, conn *protocol.Conn, lc protocol.ListenConfig, log *slog.Logger) func(context.Context) error {
	return func(ctx context.Context) error {
		if conn.Path() != "" {
			watchSocket(ctx, srv, conn, lc, log)
		}
		<-ctx.Done()
		return nil
	}
}

// watchSocket re-creates the socket file each time it goes, until ctx is
// cancelled or the file can no longer be watched.
func watchSocket(ctx context.Context, srv *protocol.Server, conn *protocol.Conn, lc protocol.ListenConfig, log *slog.Logger) {
	w, err := protocol.WatchPath(conn.Path())
	if err != nil {
		log.Warn("not watching the notify socket file; if it is removed, restart notifyd", "error", err)
		return
	}
	defer w.Close()
	defer context.AfterFunc(ctx, func() { w.Close() })()
	for current := conn; ; {
		// The watch follows the file at the path, so it is armed again
		// before each check: a change after the check is never missed.
		err := w.Arm()
		if err == nil && !current.Present() {
			if next := recreate(srv, current, lc, log); next != current {
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
		case errors.Is(err, protocol.ErrDirGone):
			log.Error("the notify socket's directory is gone; restart notifyd once it is back", "socket", lc.Path)
			return
		case err != nil:
			log.Error("stopped watching the notify socket file; if it is removed, restart notifyd", "error", err)
			return
		}
	}
}

// recreate binds a new socket at the path and hands it to srv, which goes on
// reading the old one too for senders that connected before. It returns the
// socket now at the path, or current when that failed.
func recreate(srv *protocol.Server, current *protocol.Conn, lc protocol.ListenConfig, log *slog.Logger) *protocol.Conn {
	log.Warn("notify socket file removed; re-creating it", "socket", lc.Path)
	next, err := protocol.Listen(lc)
	if err != nil {
		log.Error("notify socket not re-created; workers cannot reach notifyd until it is", "socket", lc.Path, "error", err)
		return current
	}
	srv.Replace(next)
	log.Info("notify socket re-created", "socket", lc.Path)
	return next
}
