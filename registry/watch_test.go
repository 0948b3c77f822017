//go:build linux

package registry

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/notifyd/notifyd/protocol"
	"golang.org/x/sys/unix"
)

// pidfdOf opens a pidfd for pid, as the kernel would attach one with
// SCM_PIDFD, and closes it when the test ends.
func pidfdOf(t *testing.T, pid int) int {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// wantOpen fails the test unless fd is still an open descriptor.
func wantOpen(t *testing.T, fd int) {
	t.Helper()
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the sender's pidfd %d was closed by the registry: %v", fd, err)
	}
}

// TestSenderPidfd checks a message that comes with the sender's own pidfd:
// the registry watches a copy of it and leaves the original to the caller.
func TestSenderPidfd(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	sender := startSleep(t)
	fd := pidfdOf(t, sender.pid())

	send(t, r, protocol.Message{Lifecycle: protocol.Ready}, protocol.Credentials{PID: sender.pid(), PIDFD: fd})
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	if w := oneWorker(t, r); w.PID != sender.pid() || w.StartTime != startTimeOf(t, sender.pid()) {
		t.Fatalf("worker = %+v, want pid %d with its start time", w, sender.pid())
	}
	wantOpen(t, fd)

	sender.kill(t)
	eventually(t, "the sender's exit to be seen", func() bool { return r.Summary() == Summary{} })
	if got := savedNames(t, r); len(got) != 0 {
		t.Fatalf("state directory holds %q, want nothing", got)
	}
	if got := r.Exits(); got != 1 {
		t.Fatalf("Exits() = %d, want 1", got)
	}
	wantOpen(t, fd)
}

// TestSenderPidfdNotUsedForOtherPid checks that the sender's pidfd is never
// taken as the pidfd of another pid the message names: the sender's exit
// must not drop that worker.
func TestSenderPidfdNotUsedForOtherPid(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	sender, named, witness := startSleep(t), startSleep(t), startSleep(t)
	fd := pidfdOf(t, sender.pid())

	send(t, r, ready(named.pid()), protocol.Credentials{PID: sender.pid(), PIDFD: fd})
	send(t, r, ready(witness.pid()), rootCreds())
	wantSummary(t, r, Summary{Ready: 2, Workers: 2})

	// The sender's pidfd becomes readable first; once the witness's exit,
	// which comes after it, has been handled, the sender's would have been.
	sender.kill(t)
	waitZombie(t, sender.pid())
	witness.kill(t)
	eventually(t, "the witness's exit to be seen", func() bool { return r.Summary().Workers == 1 })
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	if got := pids(r.Workers()); !slices.Equal(got, []int{named.pid()}) {
		t.Fatalf("registered pids %v, want [%d]", got, named.pid())
	}

	named.kill(t)
	eventually(t, "the named worker's exit to be seen", func() bool { return r.Summary() == Summary{} })
	if got := r.Exits(); got != 2 {
		t.Fatalf("Exits() = %d, want 2", got)
	}
}

// TestSenderPidfdOfReplacedSender checks a READY=1 whose sender pidfd names a
// process that has exited and been reaped, while its pid already belongs to
// a new process: the pidfd says who sent the message, so the new process is
// not registered in the sender's place.
func TestSenderPidfdOfReplacedSender(t *testing.T) {
	tests := []struct {
		name string
		msg  func(pid int) protocol.Message
	}{
		{name: "naming no pid", msg: func(int) protocol.Message { return protocol.Message{Lifecycle: protocol.Ready} }},
		{name: "naming the sender's pid", msg: ready},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			rec := &recorder{}
			cfg.OnChange = rec.onChange
			r := startRegistry(t, cfg)
			old := startSleep(t)
			pid := old.pid()
			fd := pidfdOf(t, pid)
			old.killAndReap(t)
			startWithPid(t, pid)
			base := openFDs(t)

			err := r.HandleMessage(tt.msg(pid), protocol.Credentials{PID: pid, UID: 0, PIDFD: fd})
			if !errors.Is(err, ErrNoProcess) {
				t.Fatalf("READY=1 with the pidfd of a replaced sender: %v, want ErrNoProcess", err)
			}
			if reason := protocol.ReasonOf(err); reason != "no_such_process" {
				t.Fatalf("ReasonOf = %q, want no_such_process", reason)
			}
			wantSummary(t, r, Summary{})
			if ws := r.Workers(); len(ws) != 0 {
				t.Fatalf("Workers() = %+v, want none", ws)
			}
			if got := savedNames(t, r); len(got) != 0 {
				t.Fatalf("state directory holds %q, want nothing", got)
			}
			if got := rec.summaries(); !slices.Equal(got, []Summary{{}}) {
				t.Fatalf("OnChange saw %+v, want only the initial summary", got)
			}
			if got := r.Exits(); got != 0 {
				t.Fatalf("Exits() = %d, want 0", got)
			}
			if got := openFDs(t); got != base {
				t.Fatalf("%d descriptors open after the rejection, want %d as before it", got, base)
			}
			wantOpen(t, fd)
		})
	}
}

// openFDs counts the descriptors the test process has open.
func openFDs(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// TestNoDescriptorLeak follows the registry's descriptors through a
// registry's life: one epoll instance and one eventfd with pidfds, none
// with sweeps, and one pidfd per watched worker.
func TestNoDescriptorLeak(t *testing.T) {
	tests := []struct {
		detection Detection
		// own is the registry's descriptors besides its pidfds, the state
		// directory's lock among them; perWorker is 1 when each worker
		// costs a pidfd.
		own, perWorker int
	}{
		{detection: Pidfd, own: 3, perWorker: 1},
		{detection: Sweep, own: 1, perWorker: 0},
	}
	for _, tt := range tests {
		t.Run(tt.detection.String(), func(t *testing.T) {
			// Children first: the os package holds a pidfd of each child
			// until it is reaped.
			a, b, c := startSleep(t), startSleep(t), startSleep(t)
			fd := pidfdOf(t, c.pid())
			cfg := testConfig(t)
			cfg.Detection = tt.detection
			base := openFDs(t)

			r, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			steps := []struct {
				name    string
				do      func(t *testing.T)
				workers int
			}{
				{name: "new", do: func(*testing.T) {}, workers: 0},
				{name: "a ready", do: func(t *testing.T) { send(t, r, ready(a.pid()), rootCreds()) }, workers: 1},
				{name: "a ready again", do: func(t *testing.T) { send(t, r, ready(a.pid()), rootCreds()) }, workers: 1},
				{name: "b ready", do: func(t *testing.T) { send(t, r, ready(b.pid()), rootCreds()) }, workers: 2},
				{name: "c ready with its pidfd", do: func(t *testing.T) {
					send(t, r, protocol.Message{Lifecycle: protocol.Ready}, protocol.Credentials{PID: c.pid(), PIDFD: fd})
				}, workers: 3},
				{name: "a stopping", do: func(t *testing.T) { send(t, r, stopping(a.pid()), rootCreds()) }, workers: 2},
				{name: "rejected", do: func(t *testing.T) {
					if err := r.HandleMessage(ready(protocol.MaxPID), rootCreds()); err == nil {
						t.Fatal("READY=1 for a pid beyond pid_max was accepted")
					}
				}, workers: 2},
				{name: "b killed", do: func(t *testing.T) {
					// Left a zombie, so that the os package keeps its pidfd.
					b.kill(t)
					waitZombie(t, b.pid())
					if tt.detection == Sweep {
						r.sweep()
					}
					eventually(t, "the exit of b to be seen", func() bool { return r.Summary().Workers == 1 })
				}, workers: 1},
			}
			for _, step := range steps {
				t.Run(step.name, func(t *testing.T) {
					step.do(t)
					if got := r.Summary().Workers; got != step.workers {
						t.Fatalf("Summary().Workers = %d, want %d", got, step.workers)
					}
					if got, want := openFDs(t), base+tt.own+step.workers*tt.perWorker; got != want {
						t.Fatalf("%d descriptors open, want %d", got, want)
					}
				})
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			if err := r.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if got := openFDs(t); got != base {
				t.Fatalf("%d descriptors open after Close, want %d as before New", got, base)
			}
			wantOpen(t, fd)
		})
	}
}
