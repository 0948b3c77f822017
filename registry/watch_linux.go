package registry

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// pidfdWatcher learns of process exits from the kernel: each watched process
// has a pidfd, which becomes readable the moment the process exits (becomes a
// zombie), and one epoll instance waits on all of them. While nothing exits
// it does not wake up at all.
type pidfdWatcher struct {
	epfd int
	wake int // eventfd: written by stop to end run
}

// pidfdSupported reports whether this kernel has pidfd_open (Linux 5.3+).
func pidfdSupported() bool {
	fd, err := unix.PidfdOpen(unix.Getpid(), 0)
	if err != nil {
		// Only a kernel without the call, or a filter that forbids it, says
		// no for good; running out of descriptors is an error of its own,
		// which the watcher's creation then reports.
		return !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM)
	}
	unix.Close(fd)
	return true
}

func newPidfdWatcher() (*pidfdWatcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create epoll instance: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("watch eventfd: %w", err)
	}
	return &pidfdWatcher{epfd: epfd, wake: wake}, nil
}

// watch opens a pidfd for pid and adds it to the epoll set. An exit that
// happened before the call is reported too: the pidfd of an exited process
// is readable at once.
func (w *pidfdWatcher) watch(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
		return -1, errGone // gone, or a thread of some process rather than a process
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return fd, w.watchFD(pid, fd)
}

// watchFD adds a pidfd the caller already has, such as a dup of the sender's
// SCM_PIDFD, to the epoll set. On error the descriptor is closed.
func (w *pidfdWatcher) watchFD(pid, fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: int32(pid)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch pidfd of %d: %w", pid, err)
	}
	return nil
}

// unwatch closes a pidfd; closing it also takes it out of the epoll set.
func (w *pidfdWatcher) unwatch(fd int) {
	unix.Close(fd)
}

// run reports exits to exited until stop is called. exited gets the pid and
// the pidfd the event came from, which may have been closed and reused by
// then: it must check with exitwatch.Exited before it acts.
func (w *pidfdWatcher) run(exited func(pid, pidfd int)) error {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for process exits: %w", err)
		}
		for _, ev := range events[:n] {
			if ev.Pad == -1 {
				var drain [8]byte
				unix.Read(w.wake, drain[:]) // so that a later run waits again
				return nil
			}
			exited(int(ev.Pad), int(ev.Fd))
		}
	}
}

// stop ends run. It is safe to call more than once.
func (w *pidfdWatcher) stop() {
	var one = [8]byte{1}
	unix.Write(w.wake, one[:])
}

func (w *pidfdWatcher) close() {
	unix.Close(w.epfd)
	unix.Close(w.wake)
}
