//go:build linux

package registry

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// hour is a heartbeat deadline no test run reaches, in microseconds.
const hour = uint64(time.Hour / time.Microsecond)

func TestHeartbeatDeadline(t *testing.T) {
	tests := []struct {
		name        string
		configUSec  uint64 // Config.WatchdogUSec
		declareUSec uint64 // WATCHDOG_USEC= sent with READY=1
		wantHung    bool
	}{
		{name: "declared by the worker", declareUSec: 200000, wantHung: true},
		{name: "default from the config", configUSec: 200000, wantHung: true},
		{name: "declared shorter than the default", configUSec: hour, declareUSec: 200000, wantHung: true},
		{name: "declared longer than the default", configUSec: 200000, declareUSec: hour},
		{name: "no deadline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.WatchdogUSec = tt.configUSec
			rec := &recorder{}
			cfg.OnChange = rec.onChange
			r := startRegistry(t, cfg)
			c := startSleep(t)
			pid := c.pid()
			path := statePath(cfg.Dir, pid)

			send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: pid, WatchdogUSec: tt.declareUSec}, rootCreds())
			if got := rec.summaries(); !slices.Equal(got, []Summary{{}, {Ready: 1, Workers: 1}}) {
				t.Fatalf("OnChange saw %+v, want the worker counted once READY=1 arrived", got)
			}
			file := readFile(t, path)
			if got, want := strings.Contains(file, "\nWATCHDOG_USEC="), tt.declareUSec != 0; got != want {
				t.Fatalf("state file %q has WATCHDOG_USEC: %v, want %v", file, got, want)
			}

			if !tt.wantHung {
				// A witness registered after it with a 200 ms deadline of
				// its own: once the witness is hung, 200 ms have passed for
				// the worker too, and it must still be ready.
				witness := startSleep(t).pid()
				send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: witness, WatchdogUSec: 200000}, rootCreds())
				eventually(t, "the witness to miss its heartbeat", func() bool { return workerState(t, r, witness) == Hung })
				if got := workerState(t, r, pid); got != Ready {
					t.Fatalf("worker is %v once the 200 ms witness is hung, want ready", got)
				}
				wantSummary(t, r, Summary{Ready: 1, Workers: 2})
				return
			}

			eventually(t, "the worker to miss its heartbeat", func() bool { return oneWorker(t, r).State == Hung })
			wantSummary(t, r, Summary{Ready: 0, Workers: 1})
			if got := readFile(t, path); got != file {
				t.Fatalf("a hung worker's state file changed to %q, want it kept as %q", got, file)
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(pid)}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(pid))
			}

			// A heartbeat makes it count again at once; it may miss its
			// deadline again afterwards, which is no concern here.
			seen := len(rec.summaries())
			send(t, r, protocol.Message{PID: pid, Watchdog: true}, rootCreds())
			if got := rec.summaries()[seen:]; len(got) == 0 || got[0] != (Summary{Ready: 1, Workers: 1}) {
				t.Fatalf("OnChange saw %+v after WATCHDOG=1, want {Ready:1 Workers:1} first", got)
			}
			if w := oneWorker(t, r); w.LastWatchdog.IsZero() {
				t.Fatalf("worker %+v has no LastWatchdog after WATCHDOG=1", w)
			}

			// A heartbeat that also declares a long deadline keeps it ready.
			send(t, r, protocol.Message{PID: pid, Watchdog: true, WatchdogUSec: hour}, rootCreds())
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			w := oneWorker(t, r)
			if w.State != Ready || w.WatchdogUSec != hour {
				t.Fatalf("worker = %+v, want ready with WatchdogUSec %d", w, hour)
			}
			if got, want := readFile(t, path), wantState(w); got != want {
				t.Fatalf("state file holds\n%q\nwant\n%q", got, want)
			}
			if got := r.Exits(); got != 0 {
				t.Fatalf("Exits() = %d, want 0: a hung worker has not exited", got)
			}
		})
	}
}

// workerState is the state of the registered worker pid, failing the test
// when there is none.
func workerState(tb testing.TB, r *Registry, pid int) State {
	tb.Helper()
	for _, w := range r.Workers() {
		if w.PID == pid {
			return w.State
		}
	}
	tb.Fatalf("pid %d is not registered", pid)
	return 0
}

// TestHungWorkerLeavesOnStopping checks that a hung worker still leaves the
// registry, and its file is removed, when it stops.
func TestHungWorkerLeavesOnStopping(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	c := startSleep(t)
	send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: c.pid(), WatchdogUSec: 100000}, rootCreds())
	eventually(t, "the worker to miss its heartbeat", func() bool { return oneWorker(t, r).State == Hung })

	send(t, r, stopping(c.pid()), rootCreds())
	wantSummary(t, r, Summary{})
	if got := savedNames(t, r); len(got) != 0 {
		t.Fatalf("state directory holds %q, want nothing", got)
	}
}

// TestRecoveredDeadlineIsArmed checks that a deadline read back from a state
// file is enforced again.
func TestRecoveredDeadlineIsArmed(t *testing.T) {
	cfg := testConfig(t)
	c := startSleep(t)
	content := "PID=" + itoa(c.pid()) + "\nSTARTTIME=" + utoa(startTimeOf(t, c.pid())) +
		"\nREADY_AT=2026-01-02T03:04:05Z\nWATCHDOG_USEC=200000\n"
	writeFile(t, statePath(cfg.Dir, c.pid()), content)
	r := startRegistry(t, cfg)
	if w := oneWorker(t, r); w.WatchdogUSec != 200000 {
		t.Fatalf("adopted worker has WatchdogUSec %d, want 200000", w.WatchdogUSec)
	}
	eventually(t, "the adopted worker to miss its heartbeat", func() bool { return oneWorker(t, r).State == Hung })
	wantSummary(t, r, Summary{Ready: 0, Workers: 1})
	if got := readFile(t, statePath(cfg.Dir, c.pid())); got != content {
		t.Fatalf("state file changed to %q, want it kept as %q", got, content)
	}
}

func TestFailedWorkerDoesNotCount(t *testing.T) {
	tests := []struct {
		name      string
		msg       func(pid int) protocol.Message
		wantErrno int
	}{
		{name: "WATCHDOG=trigger", msg: func(pid int) protocol.Message { return protocol.Message{PID: pid, Failed: true} }},
		{name: "ERRNO=", msg: func(pid int) protocol.Message {
			return protocol.Message{PID: pid, Failed: true, Errno: 28}
		}, wantErrno: 28},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			r := startRegistry(t, cfg)
			c := startSleep(t)
			send(t, r, ready(c.pid()), rootCreds())
			send(t, r, tt.msg(c.pid()), rootCreds())
			wantSummary(t, r, Summary{Ready: 0, Workers: 1})
			if w := oneWorker(t, r); w.State != Failed || w.Errno != tt.wantErrno {
				t.Fatalf("worker = %+v, want failed with errno %d", w, tt.wantErrno)
			}
			// A heartbeat does not undo a declared failure; READY=1 does.
			send(t, r, protocol.Message{PID: c.pid(), Watchdog: true}, rootCreds())
			wantSummary(t, r, Summary{Ready: 0, Workers: 1})
			send(t, r, ready(c.pid()), rootCreds())
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if got, want := readFile(t, statePath(cfg.Dir, c.pid())), wantState(oneWorker(t, r)); got != want {
				t.Fatalf("state file holds\n%q\nwant\n%q", got, want)
			}
		})
	}
}
