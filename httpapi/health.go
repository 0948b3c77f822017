package httpapi

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/registry"
)

// Source is where everything httpapi serves gets its numbers: the
// registry, or anything that answers as it does, so that the formats can be
// tested without real processes.
type Source interface {
	// Summary is the health answer's input: one atomic load, no lock.
	Summary() registry.Summary
	// Workers lists every registered worker, ordered by pid.
	Workers() []registry.Worker
	// Exits counts workers that left without STOPPING=1.
	Exits() uint64
	// StateFileErrors counts state file writes and removals that failed.
	StateFileErrors() uint64
	// Activity is the instance's requests in flight, busy workers and
	// counters, without a lock. Only information lines and the agent's
	// idle weight read it, never the health status.
	Activity() registry.Totals
}

// Header values shared by every answer; net/http only reads them.
var (
	textPlain = []string{"text/plain; charset=utf-8"}
	noStore   = []string{"no-store"}
)

// Health answers the health check on every method and path.
type Health struct {
	src      Source
	required int
	queues   *backlog.Reader // informational lines in ?verbose; nil for none
	last     atomic.Pointer[plainAnswer]
}

// plainAnswer is the plain answer for one count of ready workers, made once
// and then shared by every request that finds the same count: a burst of
// health checks then costs no allocation of the handler's own, and no
// garbage for the collector to come back for. net/http copies the body and
// only reads the header values.
type plainAnswer struct {
	ready    int
	phase    phase
	draining bool
	body     []byte
	length   []string // Content-Length
}

// phase is where the instance is in its life, as the answers say it.
type phase uint8

const (
	running   phase = iota
	starting        // no --require workers ready yet since notifyd started
	reloading       // a reload keeps the stopping generation's count
)

func (p phase) String() string {
	switch p {
	case starting:
		return "starting"
	case reloading:
		return "reloading"
	}
	return "running"
}

func phaseOf(s registry.Summary) phase {
	switch {
	case s.Reload.Active:
		return reloading
	case s.Starting:
		return starting
	}
	return running
}

// NewHealth returns the health handler: 200 when src counts at least
// required ready workers and is not draining, else 500.
func NewHealth(src Source, required int) *Health {
	return &Health{src: src, required: required}
}

// healthy is the one rule every answer (HTTP, status, metrics, agent)
// applies. During a reload it counts the stopping generation's workers
// until the new generation is ready (registry.Summary.Counted).
func healthy(s registry.Summary, required int) bool {
	return s.Counted() >= required && !s.Draining
}

func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.src.Summary()
	var body []byte
	var length []string
	if r.URL.RawQuery != "" && r.URL.Query().Has("verbose") {
		body = h.verbose(make([]byte, 0, 256), s)
		length = []string{strconv.Itoa(len(body))}
	} else {
		a := h.plain(s)
		body, length = a.body, a.length
	}
	hdr := w.Header()
	hdr["Content-Type"] = textPlain
	hdr["Cache-Control"] = noStore
	hdr["Content-Length"] = length
	code := http.StatusOK
	if !healthy(s, h.required) {
		code = http.StatusInternalServerError
	}
	w.WriteHeader(code)
	w.Write(body)
}

// plain returns the plain answer for s: "3 workers ready\n", with
// ", starting" until the instance first has --require workers ready,
// ", reloading" while a reload keeps the stopping generation's count, and
// ", draining" while the instance drains, before the newline.
func (h *Health) plain(s registry.Summary) *plainAnswer {
	ready, ph := s.Counted(), phaseOf(s)
	if a := h.last.Load(); a != nil && a.ready == ready && a.phase == ph && a.draining == s.Draining {
		return a
	}
	body := strconv.AppendInt(nil, int64(ready), 10)
	body = append(body, " workers ready"...)
	if ph != running {
		body = append(body, ", "+ph.String()...)
	}
	if s.Draining {
		body = append(body, ", draining"...)
	}
	body = append(body, '\n')
	a := &plainAnswer{ready: ready, phase: ph, draining: s.Draining, body: body, length: []string{strconv.Itoa(len(body))}}
	h.last.Store(a)
	return a
}

// verbose writes one Kubernetes-style line per check, then the verdict:
//
//	[+]workers ok: 3/2 ready
//	[-]capacity failed: 3/4 expected (does not affect the status)
//	[+]activity ok: 2/3 workers busy, 5 requests in flight
//	healthz check passed
//
// The capacity check asserts that every worker the server is configured to
// run is ready. It is information for the operator: a server short of a
// worker still serves, so the verdict follows the workers and drain checks.
func (h *Health) verbose(b []byte, s registry.Summary) []byte {
	count := func(b []byte, n, of int, what string) []byte {
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(of), 10)
		return append(b, what...)
	}
	ready := s.Counted()
	if ready >= h.required {
		b = append(b, "[+]workers ok: "...)
	} else {
		b = append(b, "[-]workers failed: "...)
	}
	b = count(b, ready, h.required, " ready")
	switch phaseOf(s) {
	case starting:
		b = append(b, ", starting"...)
	case reloading:
		b = append(b, ", reloading: "...)
		b = count(b, s.Reload.Fresh, h.required, " of the new generation ready, ")
		b = strconv.AppendInt(b, int64(s.Reload.Kept), 10)
		b = append(b, " kept for at most "...)
		b = append(b, graceLeft(s.Reload).String()...)
		b = append(b, " more"...)
	}
	b = append(b, '\n')
	if s.Ready >= s.Expected {
		b = append(b, "[+]capacity ok: "...)
		b = count(b, s.Ready, s.Expected, " expected\n")
	} else {
		b = append(b, "[-]capacity failed: "...)
		b = count(b, s.Ready, s.Expected, " expected (does not affect the status)\n")
	}
	if s.Draining {
		b = append(b, "[-]drain failed: draining; notify --undrain or SIGUSR2 ends it\n"...)
	}
	b = activityLine(b, h.src.Activity(), s)
	b = h.queueLines(b)
	if healthy(s, h.required) {
		return append(b, "healthz check passed\n"...)
	}
	return append(b, "healthz check failed\n"...)
}

// activityLine reports how busy the workers are. It is information only,
// as the listen queue is: busy is not broken.
func activityLine(b []byte, a registry.Totals, s registry.Summary) []byte {
	b = append(b, "[+]activity ok: "...)
	b = strconv.AppendInt(b, int64(a.BusyWorkers), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(s.Workers), 10)
	b = append(b, " workers busy, "...)
	b = strconv.AppendUint(b, a.InFlight, 10)
	return append(b, " requests in flight\n"...)
}

// queueLines reports the application's listen queues. They are information
// only: a full queue means busy workers, and failing the health check for
// that would start the very cascade notifyd exists to prevent.
func (h *Health) queueLines(b []byte) []byte {
	if h.queues == nil {
		return b
	}
	queues, err := h.queues.Cached(queueMaxAge)
	if err != nil {
		return append(b, "[+]listen-queue ok: not read: "+err.Error()+"\n"...)
	}
	for _, q := range queues {
		b = append(b, "[+]listen-queue "+q.Addr+" ok: "...)
		if !q.Listening {
			b = append(b, "no listener\n"...)
			continue
		}
		b = strconv.AppendUint(b, uint64(q.Queued), 10)
		b = append(b, '/')
		b = strconv.AppendUint(b, uint64(q.Limit), 10)
		b = append(b, " queued, oldest "...)
		b = strconv.AppendFloat(b, q.OldestSeconds, 'f', 1, 64)
		b = append(b, "s, peak "...)
		b = strconv.AppendUint(b, uint64(q.Peak), 10)
		if q.CountsDrops() {
			b = append(b, ", "...)
			b = strconv.AppendUint(b, q.Drops, 10)
			b = append(b, " dropped"...)
		}
		b = append(b, '\n')
	}
	return b
}

// graceLeft is how long the reload r keeps its count at most, to the
// millisecond.
func graceLeft(r registry.Reload) time.Duration {
	return max(0, time.Until(r.GraceEnds)).Round(time.Millisecond)
}
