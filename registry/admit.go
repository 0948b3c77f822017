//go:build linux

package registry

import (
	"errors"
	"fmt"
	"os"

	"github.com/notifyd/notifyd/internal/exitwatch"
	"github.com/notifyd/notifyd/protocol"
	"golang.org/x/sys/unix"
)

// The reasons the registry rejects a message.
var (
	ErrNoProcess    = protocol.NewRejection("no_such_process", "no such process")
	ErrNotPermitted = protocol.NewRejection("not_permitted", "sender may not speak for this pid")
	ErrPageTwice    = protocol.NewRejection("page_twice", "the worker already has another activity page; one page per worker, for its whole life")
)

// admission is what admit learned about the process a message is about.
type admission struct {
	pid int
	// known is the registered worker of pid when a pidfd vouched for it, so
	// that no /proc read was needed.
	known *entry
	// startTime is the process's, read from /proc when known is nil.
	startTime uint64
	// gone is set when the process is gone. Only STOPPING=1 is admitted
	// about a process that is gone; it then removes pid if registered.
	gone bool
	// stale is a registered worker found to have exited; it is dropped
	// with the message's change.
	stale *entry
	// pinned is a pidfd opened for pid before /proc was read, for a worker
	// not registered yet; -1 for none. release closes it unless add took it.
	pinned int
}

// admit decides which pid m is about and whether sender may speak for it,
// and finds out whether that process is alive and which process it is. A
// pid that is not registered yet is pinned by a pidfd before /proc is read,
// so that an exit after the read is reported by the watcher, and the read
// cannot describe a process that took over the pid unnoticed.
func (r *Registry) admit(m protocol.Message, sender protocol.Credentials) (admission, error) {
	a := admission{pinned: -1}
	if r.cfg.Access == RootOnly && sender.UID != 0 {
		return a, fmt.Errorf("%w: uid %d is not root, and access is root", ErrNotPermitted, sender.UID)
	}
	stopping := m.Lifecycle == protocol.Stopping
	pid, err := r.subject(m, sender)
	if errors.Is(err, errForeignPID) && stopping {
		a.gone = true // the pidfd already saw that worker go, if it was ours
		return a, nil
	}
	if err != nil {
		return a, err
	}
	a.pid = pid
	if e := r.pinned(pid); e != nil {
		err := r.mayDirect(pid, sender)
		// A uid read from /proc is e's only if e's process still had not
		// exited after the read: until then, no other process had its pid.
		if errors.Is(err, errGone) || err == nil && r.readsUID(pid, sender) && exitwatch.Exited(e.pidfd) {
			a.stale = e
			return a.withoutProcess(stopping)
		}
		a.known = e
		return a, err
	}
	senderFD := 0
	if r.watcher != nil && !stopping && changesWorker(m) {
		if pid == sender.PID {
			senderFD = sender.PIDFD
		}
		if a.pinned, err = r.watchPid(pid, senderFD); errors.Is(err, errGone) {
			return a.withoutProcess(stopping)
		} else if err != nil {
			return a, err
		}
	}
	info, err := readProc(pid)
	if err == nil && senderFD > 0 && exitwatch.Exited(a.pinned) {
		// The sender's own pidfd may have waited in the socket queue long
		// enough for its process to go and the pid to be taken: then /proc
		// described the newcomer.
		err = errGone
	}
	if err == nil {
		err = r.mayDirect(pid, sender)
	}
	if errors.Is(err, errGone) {
		return a.withoutProcess(stopping)
	}
	a.startTime = info.startTime
	return a, err
}

// withoutProcess admits a STOPPING=1 about a process that is gone, and rejects
// anything else.
func (a admission) withoutProcess(stopping bool) (admission, error) {
	if stopping {
		a.gone = true
		return a, nil
	}
	return a, fmt.Errorf("%w: pid %d has exited or never existed", ErrNoProcess, a.pid)
}

// release closes the pidfd admit pinned, unless add has taken it.
func (r *Registry) release(a *admission) {
	if a.pinned >= 0 {
		r.watcher.unwatch(a.pinned)
		a.pinned = -1
	}
}

// errForeignPID means a PID= names a pid of the sender's own, nested pid
// namespace, which notifyd cannot translate.
var errForeignPID = fmt.Errorf("%w: PID= is a pid of the sender's own pid namespace, which notifyd cannot see; send from the worker itself without PID=, or run notifyd in the workers' pid namespace", ErrNoProcess)

// subject returns the pid m is about, in notifyd's pid namespace. The
// kernel translates the sender's own pid, but not a number in the message
// text: from a sender in a nested pid namespace, PID= is taken only when it
// is the sender itself.
func (r *Registry) subject(m protocol.Message, sender protocol.Credentials) (int, error) {
	if m.PID == 0 || m.PID == sender.PID {
		return sender.PID, nil
	}
	if same, known := inOwnPidNamespace(sender.PID); known && same {
		return m.PID, nil
	}
	inner, nested, err := innermostPID(sender.PID)
	switch {
	case errors.Is(err, errGone), err == nil && !nested:
		return m.PID, nil
	case err != nil:
		return 0, err
	case m.PID == inner:
		return sender.PID, nil
	}
	return 0, errForeignPID
}

// mayDirect checks that sender may speak for pid. Under --access same-uid a
// sender other than root and the process itself must have its real uid,
// read from /proc.
func (r *Registry) mayDirect(pid int, sender protocol.Credentials) error {
	if !r.readsUID(pid, sender) {
		return nil
	}
	uid, err := realUID(pid)
	if err != nil {
		return err
	}
	if uid != sender.UID {
		return fmt.Errorf("%w: pid %d belongs to uid %d, the sender is uid %d", ErrNotPermitted, pid, uid, sender.UID)
	}
	return nil
}

// readsUID reports whether mayDirect must read pid's uid from /proc.
func (r *Registry) readsUID(pid int, sender protocol.Credentials) bool {
	return r.cfg.Access == SameUID && sender.UID != 0 && pid != sender.PID
}

// mayDrain checks that sender may drain or undrain the instance.
func (r *Registry) mayDrain(sender protocol.Credentials) error {
	return r.mayInstance(sender, "drain")
}

// mayInstance checks that sender may speak for the whole instance (drain
// it, reload it, set its capacity): root and notifyd's own uid only, and
// only root under --access root. what names the act for the error.
func (r *Registry) mayInstance(sender protocol.Credentials, what string) error {
	if r.cfg.Access == RootOnly && sender.UID != 0 {
		return fmt.Errorf("%w: uid %d is not root, and access is root", ErrNotPermitted, sender.UID)
	}
	if sender.UID != 0 && sender.UID != os.Getuid() {
		return fmt.Errorf("%w: only root and notifyd's own uid may %s, the sender is uid %d", ErrNotPermitted, what, sender.UID)
	}
	return nil
}

// watchPid opens a pidfd for pid, or dups senderFD, the sender's own pidfd
// from SCM_PIDFD, when there is one.
func (r *Registry) watchPid(pid, senderFD int) (int, error) {
	if senderFD <= 0 {
		return r.watcher.watch(pid)
	}
	fd, err := unix.FcntlInt(uintptr(senderFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup pidfd of %d: %w", pid, err)
	}
	return fd, r.watcher.watchFD(pid, fd)
}
