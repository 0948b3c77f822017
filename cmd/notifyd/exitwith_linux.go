package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// exitWatch ends notifyd when another process exits: --exit-with PID. A
// gunicorn master that starts notifyd passes its own pid, so that notifyd
// goes with the master however the master ends, SIGKILL included.
//
// The process is held by a pidfd, which the kernel makes readable the
// moment the process exits, so nothing polls and a reused pid is never
// mistaken for the watched process.
type exitWatch struct {
	pid  int
	file *os.File
}

// watchExit opens a pidfd for pid. It fails when pid does not exist, or when
// the kernel has no pidfd_open (before Linux 5.3).
func watchExit(pid int) (*exitWatch, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil, &usageError{fmt.Sprintf("--exit-with %d: no such process", pid)}
	case errors.Is(err, unix.ENOSYS):
		return nil, fmt.Errorf("--exit-with %d: needs pidfd_open, Linux 5.3 or later", pid)
	case err != nil:
		return nil, fmt.Errorf("--exit-with %d: open pidfd: %w", pid, err)
	}
	// A non-blocking descriptor goes to the runtime's poller, so waiting on
	// it takes no thread and a deadline interrupts the wait.
	return &exitWatch{pid: pid, file: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// Run returns nil once the process has exited, which stops the rest of
// notifyd, or when ctx is cancelled.
func (w *exitWatch) Run(log *slog.Logger) func(context.Context) error {
	return func(ctx context.Context) error {
		raw, err := w.file.SyscallConn()
		if err != nil {
			return fmt.Errorf("--exit-with %d: %w", w.pid, err)
		}
		defer context.AfterFunc(ctx, func() { w.file.SetReadDeadline(time.Now()) })()
		exited := false
		err = raw.Read(func(fd uintptr) bool {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 0)
			exited = err == nil && n > 0
			return exited
		})
		if !exited {
			return nil // cancelled
		}
		log.Info("the process notifyd exits with has exited; stopping", "exit_with", w.pid)
		return nil
	}
}

// Close releases the pidfd.
func (w *exitWatch) Close() error { return w.file.Close() }
