//go:build linux

package registry

import (
	"errors"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

func TestReadyWritesStateFile(t *testing.T) {
	tests := []struct {
		name   string
		status *string
		want   func(pid int, start uint64, readyAt string) string
	}{
		{
			name: "without status",
			want: func(pid int, start uint64, readyAt string) string {
				return "PID=" + strconv.Itoa(pid) + "\nSTARTTIME=" + strconv.FormatUint(start, 10) +
					"\nREADY_AT=" + readyAt + "\n"
			},
		},
		{
			name:   "with status",
			status: text("booted in 1.5 s (pid files ok)"),
			want: func(pid int, start uint64, readyAt string) string {
				return "PID=" + strconv.Itoa(pid) + "\nSTARTTIME=" + strconv.FormatUint(start, 10) +
					"\nREADY_AT=" + readyAt + "\nSTATUS=booted in 1.5 s (pid files ok)\n"
			},
		},
		{
			name:   "with empty status",
			status: text(""),
			want: func(pid int, start uint64, readyAt string) string {
				return "PID=" + strconv.Itoa(pid) + "\nSTARTTIME=" + strconv.FormatUint(start, 10) +
					"\nREADY_AT=" + readyAt + "\n"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			r := startRegistry(t, cfg)
			c := startSleep(t)
			pid := c.pid()

			before := time.Now()
			send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: pid, Status: tt.status}, rootCreds())
			after := time.Now()

			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			w := oneWorker(t, r)
			start := startTimeOf(t, pid)
			if w.PID != pid || w.StartTime != start || w.State != Ready {
				t.Fatalf("worker = %+v, want pid %d, start time %d, state ready", w, pid, start)
			}
			if w.ReadyAt.Before(before) || w.ReadyAt.After(after) {
				t.Fatalf("ReadyAt = %v, want between %v and %v", w.ReadyAt, before, after)
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(pid)}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(pid))
			}
			path := statePath(cfg.Dir, pid)
			content := readFile(t, path)
			readyAt := w.ReadyAt.UTC().Format(time.RFC3339Nano)
			if want := tt.want(pid, start, readyAt); content != want {
				t.Fatalf("state file holds\n%q\nwant\n%q", content, want)
			}
			parsed, err := time.Parse(time.RFC3339, readyAt)
			if err != nil || !parsed.Equal(w.ReadyAt) {
				t.Fatalf("READY_AT=%s is not the RFC 3339 form of %v (%v)", readyAt, w.ReadyAt, err)
			}
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != 0o644 {
				t.Fatalf("state file mode = %v, want %v", fi.Mode(), fs.FileMode(0o644))
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	c := startSleep(t)
	pid := c.pid()
	path := statePath(cfg.Dir, pid)

	steps := []struct {
		name       string
		msg        protocol.Message
		want       Summary
		wantState  State
		wantStatus string
		wantFile   bool
	}{
		{name: "ready", msg: ready(pid), want: Summary{Ready: 1, Workers: 1}, wantState: Ready, wantFile: true},
		{name: "status while ready", msg: protocol.Message{PID: pid, Status: text("serving")},
			want: Summary{Ready: 1, Workers: 1}, wantState: Ready, wantStatus: "serving", wantFile: true},
		{name: "status replaced", msg: protocol.Message{PID: pid, Status: text("busy: 3 of 4 threads")},
			want: Summary{Ready: 1, Workers: 1}, wantState: Ready, wantStatus: "busy: 3 of 4 threads", wantFile: true},
		{name: "reloading", msg: reloading(pid), want: Summary{Ready: 0, Workers: 1},
			wantState: Reloading, wantStatus: "busy: 3 of 4 threads"},
		{name: "status while reloading", msg: protocol.Message{PID: pid, Status: text("reloading")},
			want: Summary{Ready: 0, Workers: 1}, wantState: Reloading, wantStatus: "reloading"},
		{name: "ready again", msg: ready(pid), want: Summary{Ready: 1, Workers: 1},
			wantState: Ready, wantStatus: "reloading", wantFile: true},
		{name: "ready repeated", msg: ready(pid), want: Summary{Ready: 1, Workers: 1},
			wantState: Ready, wantStatus: "reloading", wantFile: true},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			send(t, r, step.msg, rootCreds())
			wantSummary(t, r, step.want)
			w := oneWorker(t, r)
			if w.PID != pid || w.State != step.wantState || w.Status != step.wantStatus {
				t.Fatalf("worker = %+v, want pid %d, state %v, status %q", w, pid, step.wantState, step.wantStatus)
			}
			if !step.wantFile {
				if got := savedNames(t, r); len(got) != 0 {
					t.Fatalf("state directory holds %q, want nothing", got)
				}
				return
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(pid)}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(pid))
			}
			if got, want := readFile(t, path), wantState(w); got != want {
				t.Fatalf("state file holds\n%q\nwant\n%q", got, want)
			}
		})
	}
	t.Run("stopping", func(t *testing.T) {
		send(t, r, stopping(pid), rootCreds())
		wantSummary(t, r, Summary{Ready: 0, Workers: 0})
		if ws := r.Workers(); len(ws) != 0 {
			t.Fatalf("Workers() = %+v after STOPPING=1, want none", ws)
		}
		if got := savedNames(t, r); len(got) != 0 {
			t.Fatalf("state directory holds %q after STOPPING=1, want nothing", got)
		}
		if got := r.Exits(); got != 0 {
			t.Fatalf("Exits() = %d after STOPPING=1, want 0", got)
		}
	})
}

func TestMessageWithoutPIDIsAboutSender(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	c := startSleep(t)
	other := startSleep(t)

	// The sender is c, as the kernel would say; the message names no pid.
	send(t, r, protocol.Message{Lifecycle: protocol.Ready}, protocol.Credentials{PID: c.pid()})
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	if w := oneWorker(t, r); w.PID != c.pid() {
		t.Fatalf("registered pid %d, want the sender's pid %d (not %d)", w.PID, c.pid(), other.pid())
	}
	if got := savedNames(t, r); !slices.Equal(got, []string{stateName(c.pid())}) {
		t.Fatalf("state directory holds %q, want only %q", got, stateName(c.pid()))
	}
}

func TestMessageWithoutKnownKeysRegistersNothing(t *testing.T) {
	c := startSleep(t)
	tests := []struct {
		name     string
		datagram string
		creds    protocol.Credentials
	}{
		{name: "unknown key only", datagram: "X_GUNICORN_ARBITER=1", creds: protocol.Credentials{PID: c.pid()}},
		{name: "unknown key naming a pid", datagram: "CUSTOM=yes\nPID=" + strconv.Itoa(c.pid()), creds: rootCreds()},
		{name: "empty datagram", datagram: "", creds: protocol.Credentials{PID: c.pid()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			rec := &recorder{}
			cfg.OnChange = rec.onChange
			r := startRegistry(t, cfg)
			m, err := protocol.Parse([]byte(tt.datagram))
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.datagram, err)
			}
			send(t, r, m, tt.creds)
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
		})
	}
}

func TestRejectionChangesNothing(t *testing.T) {
	tests := []struct {
		name string
		// msg builds the rejected message from the pid of a process that
		// has exited and been reaped.
		msg func(gone int) protocol.Message
	}{
		{name: "ready for a pid beyond pid_max", msg: func(int) protocol.Message { return ready(protocol.MaxPID) }},
		{name: "ready for a reaped pid", msg: func(gone int) protocol.Message { return ready(gone) }},
		{name: "reloading for a reaped pid", msg: func(gone int) protocol.Message { return reloading(gone) }},
		{name: "status for a reaped pid", msg: func(gone int) protocol.Message {
			return protocol.Message{PID: gone, Status: text("x")}
		}},
		{name: "watchdog for a reaped pid", msg: func(gone int) protocol.Message {
			return protocol.Message{PID: gone, Watchdog: true, WatchdogUSec: 1000000}
		}},
		{name: "failure for a reaped pid", msg: func(gone int) protocol.Message {
			return protocol.Message{PID: gone, Failed: true, Errno: 5}
		}},
		{name: "activity for a reaped pid", msg: func(gone int) protocol.Message {
			return protocol.Message{PID: gone, Activity: &protocol.Activity{InFlight: 1, Requests: 2, BusyUSec: 3}}
		}},
		{name: "ready from a sender whose pid is gone", msg: func(int) protocol.Message {
			return protocol.Message{Lifecycle: protocol.Ready}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			rec := &recorder{}
			cfg.OnChange = rec.onChange
			r := startRegistry(t, cfg)
			kept := startSleep(t)
			send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: kept.pid(), Status: text("kept")}, rootCreds())
			keptFile := readFile(t, statePath(cfg.Dir, kept.pid()))
			keptWorkers := r.Workers()
			seen := len(rec.summaries())

			gone := startSleep(t)
			gone.killAndReap(t)
			creds := rootCreds()
			creds.PID = gone.pid()
			err := r.HandleMessage(tt.msg(gone.pid()), creds)
			if !errors.Is(err, ErrNoProcess) {
				t.Fatalf("HandleMessage = %v, want ErrNoProcess", err)
			}
			if reason := protocol.ReasonOf(err); reason != "no_such_process" {
				t.Fatalf("ReasonOf = %q, want no_such_process", reason)
			}
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if got := r.Workers(); !slices.Equal(got, keptWorkers) {
				t.Fatalf("Workers() = %+v, want %+v", got, keptWorkers)
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(kept.pid())}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(kept.pid()))
			}
			if got := readFile(t, statePath(cfg.Dir, kept.pid())); got != keptFile {
				t.Fatalf("state file changed to %q, want %q", got, keptFile)
			}
			if got := len(rec.summaries()); got != seen {
				t.Fatalf("OnChange called %d more times, want 0", got-seen)
			}
			if got := r.Exits(); got != 0 {
				t.Fatalf("Exits() = %d, want 0", got)
			}
		})
	}
}

func TestStoppingForExitedPid(t *testing.T) {
	tests := []struct {
		name     string
		register bool // register the process before it exits
		reap     bool // reap it, rather than leave a zombie
		pid      func(c *child) int
	}{
		{name: "pid beyond pid_max", pid: func(*child) int { return protocol.MaxPID }},
		{name: "reaped, never registered", reap: true, pid: (*child).pid},
		{name: "zombie, never registered", pid: (*child).pid},
		{name: "reaped, still registered", register: true, reap: true, pid: (*child).pid},
		{name: "zombie, still registered", register: true, pid: (*child).pid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			// A sweep that never runs keeps a dead worker registered.
			cfg.Detection, cfg.ReapInterval = Sweep, time.Hour
			r := startRegistry(t, cfg)
			other := startSleep(t)
			send(t, r, ready(other.pid()), rootCreds())
			c := startSleep(t)
			if tt.register {
				send(t, r, ready(c.pid()), rootCreds())
			}
			c.kill(t)
			if tt.reap {
				c.reap()
			} else {
				waitZombie(t, c.pid())
			}
			if tt.register {
				wantSummary(t, r, Summary{Ready: 2, Workers: 2})
			}

			if err := r.HandleMessage(stopping(tt.pid(c)), rootCreds()); err != nil {
				t.Fatalf("STOPPING=1 for an exited pid: %v, want nil", err)
			}
			r.Sync()
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if got := pids(r.Workers()); !slices.Equal(got, []int{other.pid()}) {
				t.Fatalf("registered pids %v, want [%d]", got, other.pid())
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(other.pid())}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(other.pid()))
			}
			if got := r.Exits(); got != 0 {
				t.Fatalf("Exits() = %d after STOPPING=1, want 0", got)
			}
		})
	}
}

func TestStoppingForUnregisteredLivePid(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	c := startSleep(t)
	send(t, r, stopping(c.pid()), rootCreds())
	wantSummary(t, r, Summary{})
	if ws := r.Workers(); len(ws) != 0 {
		t.Fatalf("Workers() = %+v, want none", ws)
	}
	if got := savedNames(t, r); len(got) != 0 {
		t.Fatalf("state directory holds %q, want nothing", got)
	}
}

func TestOnChange(t *testing.T) {
	cfg := testConfig(t)
	rec := &recorder{}
	cfg.OnChange = rec.onChange
	r := startRegistry(t, cfg)
	a, b, c := startSleep(t), startSleep(t), startSleep(t)

	steps := []struct {
		name string
		do   func(t *testing.T)
		// want is what OnChange was called with during the step.
		want []Summary
	}{
		{name: "new", do: func(*testing.T) {}, want: []Summary{{Ready: 0, Workers: 0}}},
		{name: "a ready", do: func(t *testing.T) { send(t, r, ready(a.pid()), rootCreds()) },
			want: []Summary{{Ready: 1, Workers: 1}}},
		{name: "b ready", do: func(t *testing.T) { send(t, r, ready(b.pid()), rootCreds()) },
			want: []Summary{{Ready: 2, Workers: 2}}},
		{name: "c status only", do: func(t *testing.T) {
			send(t, r, protocol.Message{PID: c.pid(), Status: text("starting")}, rootCreds())
		}, want: []Summary{{Ready: 2, Workers: 3}}},
		{name: "a status", do: func(t *testing.T) {
			send(t, r, protocol.Message{PID: a.pid(), Status: text("serving")}, rootCreds())
		}, want: nil},
		{name: "a ready repeated", do: func(t *testing.T) { send(t, r, ready(a.pid()), rootCreds()) }, want: nil},
		{name: "a reloading", do: func(t *testing.T) { send(t, r, reloading(a.pid()), rootCreds()) },
			want: []Summary{{Ready: 1, Workers: 3}}},
		{name: "a ready again", do: func(t *testing.T) { send(t, r, ready(a.pid()), rootCreds()) },
			want: []Summary{{Ready: 2, Workers: 3}}},
		{name: "b stopping", do: func(t *testing.T) { send(t, r, stopping(b.pid()), rootCreds()) },
			want: []Summary{{Ready: 1, Workers: 2}}},
		{name: "c stopping", do: func(t *testing.T) { send(t, r, stopping(c.pid()), rootCreds()) },
			want: []Summary{{Ready: 1, Workers: 1}}},
		{name: "rejected message", do: func(t *testing.T) {
			if err := r.HandleMessage(ready(protocol.MaxPID), rootCreds()); !errors.Is(err, ErrNoProcess) {
				t.Fatalf("HandleMessage = %v, want ErrNoProcess", err)
			}
		}, want: nil},
		{name: "a killed", do: func(t *testing.T) {
			a.killAndReap(t)
			// The summary is stored before OnChange runs: wait for the call.
			eventually(t, "the exit of a to be reported", func() bool {
				all := rec.summaries()
				return len(all) > 0 && all[len(all)-1] == Summary{}
			})
		}, want: []Summary{{Ready: 0, Workers: 0}}},
	}
	seen := 0
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.do(t)
			all := rec.summaries()
			if got := all[seen:]; !slices.Equal(got, step.want) {
				t.Fatalf("OnChange saw %+v, want %+v", got, step.want)
			}
			seen = len(all)
			if last := all[len(all)-1]; last != r.Summary() {
				t.Fatalf("last OnChange summary %+v, Summary() %+v: want the same", last, r.Summary())
			}
		})
	}
}

// TestRepeatedReadyChangesNothing: a ready worker repeats READY=1 so that a
// restarted notifyd learns it again. To a notifyd that holds it, the
// repetition keeps ready_at, the count and the state file as they were: the
// file is not even rewritten.
func TestRepeatedReadyChangesNothing(t *testing.T) {
	r := startRegistry(t, testConfig(t))
	c := startSleep(t)
	pid := c.pid()
	path := statePath(r.cfg.Dir, pid)
	self := protocol.Credentials{PID: pid, UID: os.Getuid()}

	send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: pid, Status: text("serving")}, self)
	r.Sync()
	first, content := oneWorker(t, r), readFile(t, path)
	inode := inodeOf(t, path)
	for range 3 {
		send(t, r, ready(pid), self)
	}
	r.Sync()
	if w := oneWorker(t, r); w != first {
		t.Fatalf("after repeated READY=1 worker = %+v, want %+v", w, first)
	}
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	if got := inodeOf(t, path); got != inode {
		t.Fatalf("repeated READY=1 rewrote the state file (inode %d, was %d)", got, inode)
	}
	if got := readFile(t, path); got != content {
		t.Fatalf("state file = %q, want %q", got, content)
	}

	// A change the file records is written, and still keeps ready_at.
	send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: pid, Status: text("warm")}, self)
	r.Sync()
	if w := oneWorker(t, r); w.Status != "warm" || !w.ReadyAt.Equal(first.ReadyAt) {
		t.Fatalf("after a new STATUS= worker = %+v, want status warm and ready_at %v", w, first.ReadyAt)
	}
	if inodeOf(t, path) == inode {
		t.Fatal("a new STATUS= left the state file as it was")
	}

	// Ready again after a reload is ready anew.
	send(t, r, reloading(pid), self)
	send(t, r, ready(pid), self)
	if w := oneWorker(t, r); !w.ReadyAt.After(first.ReadyAt) {
		t.Fatalf("ready_at after RELOADING=1 then READY=1 = %v, want after %v", w.ReadyAt, first.ReadyAt)
	}
}

func inodeOf(tb testing.TB, path string) uint64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
