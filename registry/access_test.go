//go:build linux

package registry

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/protocol"
)

// targets are the processes the access tests name, one per kind of owner.
type targets struct {
	root, nobody *child
	// realRootEffNobody has real uid 0 and effective uid 65534;
	// realNobodyEffRoot has real uid 65534 and effective uid 0. The rule
	// looks at the real uid.
	realRootEffNobody, realNobodyEffRoot *child
}

func startTargets(t *testing.T) targets {
	t.Helper()
	return targets{
		root:              startSleep(t),
		nobody:            startSleepAs(t, nobody, nobody),
		realRootEffNobody: startSetpriv(t, "--euid=65534", "--egid=65534", "--clear-groups"),
		realNobodyEffRoot: startSetpriv(t, "--ruid=65534", "--rgid=65534", "--clear-groups"),
	}
}

func TestAccess(t *testing.T) {
	tests := []struct {
		name   string
		access Access
		uid    int
		// target picks the process the message is about.
		target func(targets) *child
		// fromTarget sends the message from the target itself, with no
		// PID=; otherwise the test process sends it, naming the target.
		fromTarget bool
		wantErr    error
	}{
		{name: "same-uid: nobody names a root pid", access: SameUID, uid: nobody,
			target: func(p targets) *child { return p.root }, wantErr: ErrNotPermitted},
		{name: "same-uid: nobody names a nobody pid", access: SameUID, uid: nobody,
			target: func(p targets) *child { return p.nobody }},
		{name: "same-uid: nobody speaks for itself", access: SameUID, uid: nobody,
			target: func(p targets) *child { return p.nobody }, fromTarget: true},
		{name: "same-uid: nobody names a pid with real uid nobody", access: SameUID, uid: nobody,
			target: func(p targets) *child { return p.realNobodyEffRoot }},
		{name: "same-uid: nobody names a pid with only effective uid nobody", access: SameUID, uid: nobody,
			target: func(p targets) *child { return p.realRootEffNobody }, wantErr: ErrNotPermitted},
		{name: "same-uid: another user names a nobody pid", access: SameUID, uid: 1000,
			target: func(p targets) *child { return p.nobody }, wantErr: ErrNotPermitted},
		{name: "same-uid: root names a root pid", access: SameUID, uid: 0,
			target: func(p targets) *child { return p.root }},
		{name: "same-uid: root names a nobody pid", access: SameUID, uid: 0,
			target: func(p targets) *child { return p.nobody }},
		{name: "root-only: nobody speaks for itself", access: RootOnly, uid: nobody,
			target: func(p targets) *child { return p.nobody }, fromTarget: true, wantErr: ErrNotPermitted},
		{name: "root-only: nobody names a nobody pid", access: RootOnly, uid: nobody,
			target: func(p targets) *child { return p.nobody }, wantErr: ErrNotPermitted},
		{name: "root-only: root names a nobody pid", access: RootOnly, uid: 0,
			target: func(p targets) *child { return p.nobody }},
		{name: "all: nobody names a root pid", access: All, uid: nobody,
			target: func(p targets) *child { return p.root }},
		{name: "all: another user names a nobody pid", access: All, uid: 1000,
			target: func(p targets) *child { return p.nobody }},
	}
	procs := startTargets(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Access = tt.access
			r := startRegistry(t, cfg)
			target := tt.target(procs)
			m := ready(target.pid())
			sender := protocol.Credentials{PID: os.Getpid(), UID: tt.uid, GID: tt.uid}
			if tt.fromTarget {
				m.PID, sender.PID = 0, target.pid()
			}

			err := r.HandleMessage(m, sender)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("HandleMessage = %v, want %v", err, tt.wantErr)
				}
				if reason := protocol.ReasonOf(err); reason != "not_permitted" {
					t.Fatalf("ReasonOf = %q, want not_permitted", reason)
				}
				wantSummary(t, r, Summary{})
				if ws := r.Workers(); len(ws) != 0 {
					t.Fatalf("Workers() = %+v after a refused message, want none", ws)
				}
				if got := savedNames(t, r); len(got) != 0 {
					t.Fatalf("state directory holds %q after a refused message, want nothing", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("HandleMessage = %v, want nil", err)
			}
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if w := oneWorker(t, r); w.PID != target.pid() {
				t.Fatalf("registered pid %d, want %d", w.PID, target.pid())
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(target.pid())}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(target.pid()))
			}
		})
	}
}

// TestAccessAppliesToEveryMessage checks that a sender that may not speak
// for a registered worker can change nothing about it.
func TestAccessAppliesToEveryMessage(t *testing.T) {
	tests := []struct {
		name string
		msg  func(pid int) protocol.Message
	}{
		{name: "stopping", msg: stopping},
		{name: "reloading", msg: reloading},
		{name: "status", msg: func(pid int) protocol.Message { return protocol.Message{PID: pid, Status: text("hijacked")} }},
		{name: "failure", msg: func(pid int) protocol.Message { return protocol.Message{PID: pid, Failed: true} }},
		{name: "watchdog deadline", msg: func(pid int) protocol.Message {
			return protocol.Message{PID: pid, WatchdogUSec: 1}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			r := startRegistry(t, cfg)
			c := startSleep(t)
			send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: c.pid(), Status: text("mine")}, rootCreds())
			before := r.Workers()
			file := readFile(t, statePath(cfg.Dir, c.pid()))

			err := r.HandleMessage(tt.msg(c.pid()), protocol.Credentials{PID: os.Getpid(), UID: nobody, GID: nobody})
			if !errors.Is(err, ErrNotPermitted) {
				t.Fatalf("HandleMessage = %v, want ErrNotPermitted", err)
			}
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if got := r.Workers(); !slices.Equal(got, before) {
				t.Fatalf("Workers() = %+v, want %+v", got, before)
			}
			if got := readFile(t, statePath(cfg.Dir, c.pid())); got != file {
				t.Fatalf("state file changed to %q, want %q", got, file)
			}
		})
	}
}

// TestSameUIDUpdatesRegisteredWorker follows a worker registered by a
// sender of its own uid through later messages from that sender, which are
// checked against the worker's uid each time and taken.
func TestSameUIDUpdatesRegisteredWorker(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	c := startSleepAs(t, nobody, nobody)
	sender := protocol.Credentials{PID: os.Getpid(), UID: nobody, GID: nobody}

	send(t, r, ready(c.pid()), sender)
	send(t, r, protocol.Message{PID: c.pid(), Status: text("serving")}, sender)
	if w := oneWorker(t, r); w.State != Ready || w.Status != "serving" {
		t.Fatalf("worker = %+v, want ready with status serving", w)
	}
	if got := readFile(t, statePath(cfg.Dir, c.pid())); !strings.Contains(got, "STATUS=serving\n") {
		t.Fatalf("state file holds %q, want STATUS=serving", got)
	}
	send(t, r, stopping(c.pid()), sender)
	wantSummary(t, r, Summary{})
	if got := savedNames(t, r); len(got) != 0 {
		t.Fatalf("state directory holds %q, want nothing", got)
	}
}
