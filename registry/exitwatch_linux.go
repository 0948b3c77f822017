package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ExitWatch holds one process by a pidfd, which the kernel makes readable
// the moment the process exits, so nothing polls and a reused pid is never
// mistaken for the watched process. notifyd --exit-with uses it to go with
// the gunicorn master that started it, however the master ends.
type ExitWatch struct {
	pid  int
	file *os.File
}

// ErrThread is wrapped by WatchExit and ProcessOf when a pid names a thread
// other than its process's main thread: a thread id is not a process id.
var ErrThread = errors.New("a thread id, not a process id")

// ProcessOf returns pid when it names a process. The error wraps ErrThread,
// and names the process, when pid is another thread of a process; it wraps
// ErrNoProcess when there is no such pid.
func ProcessOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: pid %d", ErrNoProcess, pid)
	}
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			tgid, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0, fmt.Errorf("read /proc/%d/status: Tgid %q", pid, v)
			}
			if tgid != pid {
				return 0, fmt.Errorf("%w: %d is a thread of process %d", ErrThread, pid, tgid)
			}
			return pid, nil
		}
	}
	return 0, fmt.Errorf("read /proc/%d/status: no Tgid", pid)
}

// WatchExit opens a pidfd for pid. The error wraps ErrNoProcess when pid
// does not exist, ErrThread when it is a thread id, and says so when the
// kernel has no pidfd_open (before Linux 5.3).
func WatchExit(pid int) (*ExitWatch, error) {
	if _, err := ProcessOf(pid); err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("%w: pid %d", ErrNoProcess, pid)
	case errors.Is(err, unix.ENOSYS):
		return nil, errors.New("needs pidfd_open, Linux 5.3 or later")
	case err != nil:
		return nil, fmt.Errorf("open pidfd of %d: %w", pid, err)
	}
	// A non-blocking descriptor goes to the runtime's poller, so waiting on
	// it takes no thread and a deadline interrupts the wait.
	return &ExitWatch{pid: pid, file: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// Wait blocks until the process has exited, and reports true, or until ctx
// is cancelled, and reports false.
func (w *ExitWatch) Wait(ctx context.Context) (bool, error) {
	raw, err := w.file.SyscallConn()
	if err != nil {
		return false, err
	}
	w.file.SetReadDeadline(time.Time{}) // a cancelled Wait before may have set one
	defer context.AfterFunc(ctx, func() { w.file.SetReadDeadline(time.Now()) })()
	exited := false
	raw.Read(func(fd uintptr) bool {
		exited = exitedPidfd(int(fd))
		return exited
	})
	return exited, nil
}

// Close releases the pidfd.
func (w *ExitWatch) Close() error { return w.file.Close() }
