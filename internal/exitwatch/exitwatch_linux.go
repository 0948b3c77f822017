//go:build linux

// Package exitwatch holds a process by a pidfd (pidfd_open(2)), which the
// kernel makes readable the moment the process exits: nothing polls, and a
// reused pid is never mistaken for the process that was held.
package exitwatch

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

// ErrNoProcess is wrapped when a pid names no process: it never existed, or
// it has been reaped.
var ErrNoProcess = errors.New("no such process")

// ErrThread is wrapped when a pid names a thread other than its process's
// main thread: a thread id is not a process id.
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

// Process is one process held by its pidfd.
type Process struct {
	pid  int
	file *os.File
}

// Open opens a pidfd for pid. The error wraps ErrNoProcess when pid does not
// exist, ErrThread when it is a thread id, and says so when the kernel has
// no pidfd_open (before Linux 5.3).
func Open(pid int) (*Process, error) {
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
	return &Process{pid: pid, file: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// Wait blocks until the process has exited, and reports true, or until ctx
// is cancelled, and reports false.
func (p *Process) Wait(ctx context.Context) (bool, error) {
	raw, err := p.file.SyscallConn()
	if err != nil {
		return false, err
	}
	p.file.SetReadDeadline(time.Time{}) // a cancelled Wait before may have set one
	defer context.AfterFunc(ctx, func() { p.file.SetReadDeadline(time.Now()) })()
	exited := false
	raw.Read(func(fd uintptr) bool {
		exited = Exited(int(fd))
		return exited
	})
	return exited, nil
}

// Close releases the pidfd.
func (p *Process) Close() error { return p.file.Close() }

// Exited reports whether the process behind the pidfd fd has exited (a
// zombie has).
func Exited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
}
