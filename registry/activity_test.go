//go:build linux

package registry

import (
	"errors"
	"math"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// activity is a message that carries only a worker's activity.
func activity(pid int, inFlight uint32, requests, busyUSec uint64) protocol.Message {
	return protocol.Message{PID: pid, Activity: &protocol.Activity{InFlight: inFlight, Requests: requests, BusyUSec: busyUSec}}
}

func wantTotals(tb testing.TB, r *Registry, want Totals) {
	tb.Helper()
	if got := r.Activity(); got != want {
		tb.Fatalf("Activity() = %+v, want %+v", got, want)
	}
}

func wantActivity(tb testing.TB, r *Registry, pid int, want protocol.Activity) {
	tb.Helper()
	for _, w := range r.Workers() {
		if w.PID == pid {
			if w.Activity != want {
				tb.Fatalf("worker %d activity = %+v, want %+v", pid, w.Activity, want)
			}
			return
		}
	}
	tb.Fatalf("worker %d is not registered", pid)
}

// TestActivityPerWorkerAndTotals follows two workers through a few reports:
// each keeps its own values, and the instance sums them.
func TestActivityPerWorkerAndTotals(t *testing.T) {
	r := startRegistry(t, testConfig(t))
	a, b := startSleep(t), startSleep(t)
	for _, c := range []*child{a, b} {
		// As the gunicorn module boots a worker: READY=1 with its activity,
		// all zero.
		m := ready(c.pid())
		m.Activity = &protocol.Activity{}
		send(t, r, m, rootCreds())
	}
	wantTotals(t, r, Totals{})

	send(t, r, activity(a.pid(), 1, 0, 0), rootCreds())
	wantTotals(t, r, Totals{InFlight: 1, BusyWorkers: 1})
	send(t, r, activity(b.pid(), 3, 0, 0), rootCreds())
	wantTotals(t, r, Totals{InFlight: 4, BusyWorkers: 2})
	send(t, r, activity(a.pid(), 0, 1, 3_000_000), rootCreds())
	wantTotals(t, r, Totals{InFlight: 3, BusyWorkers: 1, Requests: 1, BusyUSec: 3_000_000})
	send(t, r, activity(b.pid(), 1, 2, 2_500_000), rootCreds())
	wantTotals(t, r, Totals{InFlight: 1, BusyWorkers: 1, Requests: 3, BusyUSec: 5_500_000})
	send(t, r, activity(b.pid(), 0, 3, 2_600_000), rootCreds())
	wantTotals(t, r, Totals{Requests: 4, BusyUSec: 5_600_000})

	wantActivity(t, r, a.pid(), protocol.Activity{Requests: 1, BusyUSec: 3_000_000})
	wantActivity(t, r, b.pid(), protocol.Activity{Requests: 3, BusyUSec: 2_600_000})
	wantSummary(t, r, Summary{Ready: 2, Workers: 2})
}

// TestActivityTouchesNoFileAndNoSummary: activity, alone or with a repeated
// READY=1, never writes a state file, never publishes a summary and never
// changes a worker's state, even for a worker that is not ready.
func TestActivityTouchesNoFileAndNoSummary(t *testing.T) {
	cfg := testConfig(t)
	rec := &recorder{}
	cfg.OnChange = rec.onChange
	r := startRegistry(t, cfg)
	c, idle := startSleep(t), startSleep(t)
	self := protocol.Credentials{PID: c.pid(), UID: os.Getuid()}
	send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: c.pid(), Status: text("serving")}, self)
	send(t, r, reloading(idle.pid()), rootCreds())
	path := statePath(cfg.Dir, c.pid())
	r.Sync()
	inode, content, seen := inodeOf(t, path), readFile(t, path), len(rec.summaries())
	before := r.Summary()

	for i := range uint64(50) {
		send(t, r, protocol.Message{Activity: &protocol.Activity{InFlight: uint32(i % 3), Requests: i, BusyUSec: 1000 * i}}, self)
		if i%10 == 0 {
			m := ready(c.pid())
			m.Activity = &protocol.Activity{Requests: i, BusyUSec: 1000 * i}
			send(t, r, m, self)
		}
	}
	send(t, r, activity(idle.pid(), 2, 7, 9), rootCreds())
	r.Sync()

	if got := inodeOf(t, path); got != inode {
		t.Fatalf("activity rewrote the state file (inode %d, was %d)", got, inode)
	}
	if got := readFile(t, path); got != content {
		t.Fatalf("state file = %q, want %q", got, content)
	}
	if got := savedNames(t, r); !slices.Equal(got, []string{stateName(c.pid())}) {
		t.Fatalf("state directory holds %q, want only %q", got, stateName(c.pid()))
	}
	if got := len(rec.summaries()); got != seen {
		t.Fatalf("OnChange called %d more times, want 0", got-seen)
	}
	if got := r.Summary(); got != before {
		t.Fatalf("Summary() = %+v, want %+v as before", got, before)
	}
	for _, w := range r.Workers() {
		want := map[int]State{c.pid(): Ready, idle.pid(): Reloading}[w.PID]
		if w.State != want {
			t.Fatalf("worker %d is %v, want %v", w.PID, w.State, want)
		}
	}
	wantTotals(t, r, Totals{InFlight: 1 + 2, BusyWorkers: 2, Requests: 49, BusyUSec: 49_000})
}

// TestActivityNeverRegisters: activity from a live process notifyd does not
// know is accepted and changes nothing; one that may not speak for the pid
// is rejected as any message would be.
func TestActivityNeverRegisters(t *testing.T) {
	cfg := testConfig(t)
	rec := &recorder{}
	cfg.OnChange = rec.onChange
	r := startRegistry(t, cfg)
	c := startSleep(t)

	send(t, r, protocol.Message{Activity: &protocol.Activity{InFlight: 1, Requests: 5, BusyUSec: 7}}, protocol.Credentials{PID: c.pid()})
	send(t, r, activity(c.pid(), 2, 6, 8), rootCreds())
	err := r.HandleMessage(activity(c.pid(), 3, 7, 9), protocol.Credentials{PID: os.Getpid(), UID: nobody})
	if !errors.Is(err, ErrNotPermitted) {
		t.Fatalf("activity for root's pid from uid %d: %v, want ErrNotPermitted", nobody, err)
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
	wantTotals(t, r, Totals{})

	// Registered later, the worker's first report is where it counts from.
	send(t, r, ready(c.pid()), rootCreds())
	send(t, r, activity(c.pid(), 1, 100, 5_000_000), rootCreds())
	wantTotals(t, r, Totals{InFlight: 1, BusyWorkers: 1})
	send(t, r, activity(c.pid(), 0, 105, 5_200_000), rootCreds())
	wantTotals(t, r, Totals{Requests: 5, BusyUSec: 200_000})
}

// TestActivityBackwardsIsIgnored: a counter lower than the last one, from
// the same process, leaves the worker's activity and the totals as they
// were and is counted; the rest of its message still applies. In flight
// may go down, and a counter may stay.
func TestActivityBackwardsIsIgnored(t *testing.T) {
	tests := []struct {
		name      string
		report    protocol.Activity
		backwards bool
	}{
		{"requests backwards", protocol.Activity{InFlight: 1, Requests: 9, BusyUSec: 600}, true},
		{"busy time backwards", protocol.Activity{InFlight: 1, Requests: 11, BusyUSec: 599}, true},
		{"both backwards", protocol.Activity{Requests: 0, BusyUSec: 0}, true},
		{"in flight down, counters the same", protocol.Activity{InFlight: 0, Requests: 10, BusyUSec: 600}, false},
		{"in flight up, counters the same", protocol.Activity{InFlight: 4, Requests: 10, BusyUSec: 600}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRegistry(t, testConfig(t))
			c := startSleep(t)
			send(t, r, ready(c.pid()), rootCreds())
			send(t, r, activity(c.pid(), 0, 0, 0), rootCreds())
			send(t, r, activity(c.pid(), 2, 10, 600), rootCreds())
			before := r.Activity()
			send(t, r, reloading(c.pid()), rootCreds())

			m := ready(c.pid())
			m.Activity = &tt.report
			send(t, r, m, rootCreds())
			wantSummary(t, r, Summary{Ready: 1, Workers: 1}) // READY=1 applied
			if !tt.backwards {
				wantActivity(t, r, c.pid(), tt.report)
				wantTotals(t, r, Totals{InFlight: uint64(tt.report.InFlight), BusyWorkers: min(1, int(tt.report.InFlight)), Requests: 10, BusyUSec: 600})
				return
			}
			wantActivity(t, r, c.pid(), protocol.Activity{InFlight: 2, Requests: 10, BusyUSec: 600})
			before.Backwards = 1
			wantTotals(t, r, before)
		})
	}
}

// TestActivityTotalsNeverGoDown: a worker that leaves, however it leaves,
// takes its requests in flight out of the gauges and leaves its counts in
// the totals; a counter at the top of uint64 stays there.
func TestActivityTotalsNeverGoDown(t *testing.T) {
	for _, leave := range []string{"stopping", "exit"} {
		t.Run(leave, func(t *testing.T) {
			r := startRegistry(t, testConfig(t))
			a, b := startSleep(t), startSleep(t)
			for _, c := range []*child{a, b} {
				send(t, r, ready(c.pid()), rootCreds())
				send(t, r, activity(c.pid(), 0, 0, 0), rootCreds())
			}
			send(t, r, activity(a.pid(), 2, 40, 6_000_000), rootCreds())
			send(t, r, activity(b.pid(), 1, 2, 1_000_000), rootCreds())
			wantTotals(t, r, Totals{InFlight: 3, BusyWorkers: 2, Requests: 42, BusyUSec: 7_000_000})

			switch leave {
			case "stopping":
				send(t, r, stopping(a.pid()), rootCreds())
			case "exit":
				a.killAndReap(t)
				eventually(t, "the exit to be seen", func() bool { return r.Summary().Workers == 1 })
			}
			wantTotals(t, r, Totals{InFlight: 1, BusyWorkers: 1, Requests: 42, BusyUSec: 7_000_000})

			send(t, r, activity(b.pid(), 0, 3, 1_500_000), rootCreds())
			wantTotals(t, r, Totals{Requests: 43, BusyUSec: 7_500_000})
			send(t, r, stopping(b.pid()), rootCreds())
			wantTotals(t, r, Totals{Requests: 43, BusyUSec: 7_500_000})
		})
	}
}

// TestActivityHostileValuesCannotFreezeTotals: a worker whose counters leap
// further than a worker can go (2^64-1 requests, an hour busy in a moment)
// is ignored and counted, so the totals go on counting another worker's
// requests; within the bound, its reports count.
func TestActivityHostileValuesCannotFreezeTotals(t *testing.T) {
	r := startRegistry(t, testConfig(t))
	hostile, honest := startSleep(t), startSleep(t)
	for _, c := range []*child{hostile, honest} {
		send(t, r, ready(c.pid()), rootCreds())
		send(t, r, activity(c.pid(), 0, 0, 0), rootCreds())
	}
	send(t, r, activity(hostile.pid(), 0, math.MaxUint64, 0), rootCreds())
	send(t, r, activity(hostile.pid(), 0, 0, uint64(time.Hour/time.Microsecond)), rootCreds())
	wantTotals(t, r, Totals{Backwards: 2})
	send(t, r, activity(honest.pid(), 0, 1000, 500_000), rootCreds())
	wantTotals(t, r, Totals{Requests: 1000, BusyUSec: 500_000, Backwards: 2})
	send(t, r, activity(hostile.pid(), 0, 7, 7), rootCreds())
	wantTotals(t, r, Totals{Requests: 1007, BusyUSec: 500_007, Backwards: 2})
	if got := r.Activity().Requests; got == math.MaxUint64 {
		t.Fatal("the totals reached the top of uint64")
	}
}

// TestAllBusy: every ready worker busy, and only then; OnAllBusy is called
// as that becomes true, whether by a request or by an idle worker leaving.
func TestAllBusy(t *testing.T) {
	cfg := testConfig(t)
	var calls int // called under the registry's lock, read after send returns
	cfg.OnAllBusy = func() { calls++ }
	r := startRegistry(t, cfg)
	if r.AllBusy() {
		t.Fatal("AllBusy() with no worker = true, want false")
	}
	a, b := startSleep(t), startSleep(t)
	for _, c := range []*child{a, b} {
		send(t, r, ready(c.pid()), rootCreds())
	}
	steps := []struct {
		name  string
		m     protocol.Message
		want  bool
		calls int
	}{
		{"one of two busy", activity(a.pid(), 1, 0, 0), false, 0},
		{"both busy", activity(b.pid(), 2, 0, 0), true, 1},
		{"one done", activity(a.pid(), 0, 1, 10), false, 1},
		{"the idle one stops", protocol.Message{Lifecycle: protocol.Stopping, PID: a.pid()}, true, 2},
		{"the last one done", activity(b.pid(), 0, 2, 20), false, 2},
	}
	for _, s := range steps {
		send(t, r, s.m, rootCreds())
		if got := r.AllBusy(); got != s.want || calls != s.calls {
			t.Fatalf("%s: AllBusy() = %v after %d calls, want %v after %d", s.name, got, calls, s.want, s.calls)
		}
	}
}
