package httpapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/notifyd/notifyd/backlog"
)

// Status is the JSON document GET /status answers. Its keys are stable.
type Status struct {
	Ready    int  `json:"ready"`
	Required int  `json:"required"`
	Expected int  `json:"expected"`
	Healthy  bool `json:"healthy"`
	Draining bool `json:"draining"`
	// Starting is true until --require workers have first been ready since
	// notifyd started.
	Starting bool `json:"starting"`
	// Reloading is true while an instance reload keeps the stopping
	// generation's count; Reload tells how far it is, null when none is.
	Reloading bool          `json:"reloading"`
	Reload    *ReloadStatus `json:"reload"`
	// InFlight is the sum of the workers' in_flight, BusyWorkers the number
	// of workers with at least one request in flight; both from the
	// workers listed here, so the document agrees with itself.
	InFlight    uint64         `json:"in_flight"`
	BusyWorkers int            `json:"busy_workers"`
	Workers     []WorkerStatus `json:"workers"`
	// ListenQueues are the application's listen queues (--listen-queue),
	// read from the kernel at most 100 ms ago; [] when none are watched.
	ListenQueues []backlog.Queue `json:"listen_queues"`
}

// ReloadStatus is the instance reload in progress.
type ReloadStatus struct {
	// Since is when the main process said RELOADING=1; GraceEnds is when
	// the answer tells the truth again at the latest.
	Since     time.Time `json:"since"`
	GraceEnds time.Time `json:"grace_ends"`
	// Kept is the stopping generation's ready count, which the health
	// answer keeps; Fresh the new generation's ready workers so far.
	Kept  int `json:"kept"`
	Fresh int `json:"fresh"`
}

// WorkerStatus is one worker in Status. Times are RFC 3339, or null when the
// event has not happened.
type WorkerStatus struct {
	PID int `json:"pid"`
	// State is ready, starting, reloading, hung or failed.
	State        string     `json:"state"`
	ReadyAt      *time.Time `json:"ready_at"`
	Status       string     `json:"status"`
	LastWatchdog *time.Time `json:"last_watchdog"`
	// StartTime is field 22 of /proc/<pid>/stat, in clock ticks since boot.
	StartTime uint64 `json:"start_time"`
	// InFlight, Requests and BusySeconds are the worker's last activity
	// report: requests in flight now, and requests finished and seconds
	// spent with at least one request in flight since it booted. All 0
	// for a worker that does not report activity.
	InFlight    uint32  `json:"in_flight"`
	Requests    uint64  `json:"requests"`
	BusySeconds float64 `json:"busy_seconds"`
}

// statusHandler answers GET /status.
type statusHandler struct {
	reg      Source
	required int
	queues   *backlog.Reader
}

func (h statusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.reg.Summary()
	workers := h.reg.Workers()
	doc := Status{
		Ready:        s.Ready,
		Required:     h.required,
		Expected:     s.Expected,
		Healthy:      healthy(s, h.required),
		Draining:     s.Draining,
		Starting:     s.Starting,
		Reloading:    s.Reload.Active,
		Workers:      make([]WorkerStatus, 0, len(workers)),
		ListenQueues: []backlog.Queue{},
	}
	if r := s.Reload; r.Active {
		doc.Reload = &ReloadStatus{Since: r.Since.UTC(), GraceEnds: r.GraceEnds.UTC(), Kept: r.Kept, Fresh: r.Fresh}
	}
	if h.queues != nil {
		if queues, err := h.queues.Cached(queueMaxAge); err == nil {
			doc.ListenQueues = queues
		}
	}
	for _, wk := range workers {
		doc.Workers = append(doc.Workers, WorkerStatus{
			PID:          wk.PID,
			State:        wk.State.String(),
			ReadyAt:      timeOrNil(wk.ReadyAt),
			Status:       wk.Status,
			LastWatchdog: timeOrNil(wk.LastWatchdog),
			StartTime:    wk.StartTime,
			InFlight:     wk.Activity.InFlight,
			Requests:     wk.Activity.Requests,
			BusySeconds:  seconds(wk.Activity.BusyUSec),
		})
		doc.InFlight += uint64(wk.Activity.InFlight)
		if wk.Activity.InFlight > 0 {
			doc.BusyWorkers++
		}
	}
	w.Header()["Content-Type"] = []string{"application/json"}
	w.Header()["Cache-Control"] = noStore
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(doc)
}

// seconds converts microseconds to seconds, the unit of every duration
// notifyd shows.
func seconds(usec uint64) float64 { return float64(usec) / 1e6 }

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}
