//go:build linux

package registry

import (
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// Totals is the instance's activity. None of it bears on the health answer:
// a busy worker is not a broken one.
type Totals struct {
	// InFlight is the sum of the registered workers' requests in flight.
	InFlight uint64
	// BusyWorkers is the number of registered workers with at least one
	// request in flight.
	BusyWorkers int
	// Requests and BusyUSec count every request finished and every
	// microsecond busy that workers reported to this notifyd, gone workers
	// included: they never go down, and stop at the largest uint64.
	Requests, BusyUSec uint64
	// Backwards counts activity reports ignored because a counter went
	// backwards for the same process, or grew faster than MaxActivityRate.
	Backwards uint64
}

// totals is Totals as the registry keeps it: written under Registry.mu,
// read without a lock, so that no reader ever waits for the registry.
type totals struct {
	inFlight    atomic.Int64
	busyWorkers atomic.Int64
	requests    atomic.Uint64
	busyUSec    atomic.Uint64
	backwards   atomic.Uint64
}

// Activity returns the instance's activity. It takes no lock and does no
// I/O; the fields are read one by one, so they may be a report apart.
func (r *Registry) Activity() Totals {
	t := &r.totals
	return Totals{
		InFlight:    uint64(t.inFlight.Load()),
		BusyWorkers: int(t.busyWorkers.Load()),
		Requests:    t.requests.Load(),
		BusyUSec:    t.busyUSec.Load(),
		Backwards:   t.backwards.Load(),
	}
}

// MaxActivityRate bounds how fast a worker's counters may grow: by one
// request, and one microsecond busy, per microsecond of wall-clock time
// (a million requests a second, far beyond any worker). ActivityBurst is
// the slack for reports that queued in the socket and arrive together. A
// report that grows faster is ignored and counted, and the next plausible
// one carries the truth, as the values are absolute. So no worker can add
// more to the totals than a worker could really do: at that rate the
// uint64 totals of a thousand workers last for centuries, where one report
// of 2^64-1 used to freeze them for good. The slack is a minute: a
// stalled notifyd, or reports queued behind a flood, read as a burst.
const (
	MaxActivityRate = time.Microsecond // per request, and per µs busy
	ActivityBurst   = time.Minute
)

// AllBusy reports whether every ready worker has a request in flight, so
// that a new connection waits in a listen queue: at least one worker is
// busy, and no fewer than are ready (a hung worker may be busy and not
// ready). It takes no lock and does no I/O.
func (r *Registry) AllBusy() bool {
	busy := r.totals.busyWorkers.Load()
	return busy > 0 && busy >= int64(r.Summary().Ready)
}

// busier tells OnAllBusy that every worker may be busy now. The caller
// holds r.mu.
func (r *Registry) busier() {
	if r.cfg.OnAllBusy != nil && r.AllBusy() {
		r.cfg.OnAllBusy()
	}
}

// record applies an activity report to e. The caller holds r.mu.
//
// The values are absolute since the worker booted, so the totals grow by
// the difference to the worker's previous report. Its first report only
// sets where that counting starts: what a worker did before this notifyd
// heard of it, before a restart of notifyd say, is never counted again, so
// a restart shows no burst of past work. A counter lower than the one
// before, from the same process, is a stale or forged report, and so is
// growth beyond MaxActivityRate: it is ignored whole and counted.
func (r *Registry) record(e *entry, a protocol.Activity, now time.Time) {
	was := e.Activity
	switch {
	case !e.reported:
		was.Requests, was.BusyUSec = a.Requests, a.BusyUSec
		e.credit, e.creditAt = ActivityBurst, now
	case a.Requests < was.Requests || a.BusyUSec < was.BusyUSec:
		r.totals.backwards.Add(1)
		r.activityLog.Log(r.log, slog.LevelDebug, "activity went backwards; ignored", "pid", e.PID,
			"requests", a.Requests, "was", was.Requests, "busy_usec", a.BusyUSec, "was_busy_usec", was.BusyUSec)
		return
	}
	credit := min(e.credit+now.Sub(e.creditAt), ActivityBurst)
	grew := max(a.Requests-was.Requests, a.BusyUSec-was.BusyUSec)
	if grew > uint64(credit/MaxActivityRate) {
		r.totals.backwards.Add(1)
		r.activityLog.Log(r.log, slog.LevelDebug, "activity grew faster than a worker can; ignored", "pid", e.PID,
			"requests", a.Requests, "was", was.Requests, "busy_usec", a.BusyUSec, "was_busy_usec", was.BusyUSec)
		return
	}
	e.credit, e.creditAt = credit-time.Duration(grew)*MaxActivityRate, now
	r.gauge(was.InFlight, a.InFlight)
	addSaturating(&r.totals.requests, a.Requests-was.Requests)
	addSaturating(&r.totals.busyUSec, a.BusyUSec-was.BusyUSec)
	e.Activity, e.reported = a, true
}

// retire takes a leaving worker's requests in flight out of the gauges. Its
// counts stay in the totals, which hold every report already. The caller
// holds r.mu.
func (r *Registry) retire(e *entry) {
	r.gauge(e.Activity.InFlight, 0)
}

// gauge moves the in-flight gauges from a worker's old count to its new one.
func (r *Registry) gauge(was, now uint32) {
	r.totals.inFlight.Add(int64(now) - int64(was))
	switch {
	case was == 0 && now > 0:
		r.totals.busyWorkers.Add(1)
		r.busier()
	case was > 0 && now == 0:
		r.totals.busyWorkers.Add(-1)
	}
}

// addSaturating adds n to a total that only the registry writes, under its
// lock, and stops at the largest uint64 rather than wrap around: a counter
// that went down would read as a restart.
func addSaturating(total *atomic.Uint64, n uint64) {
	t := total.Load()
	if t > math.MaxUint64-n {
		t = math.MaxUint64
	} else {
		t += n
	}
	total.Store(t)
}
