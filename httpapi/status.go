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
	reg                Source
	required, expected int
	queues             *backlog.Reader
}

func (h statusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.reg.Summary()
	workers := h.reg.Workers()
	doc := Status{
		Ready:        s.Ready,
		Required:     h.required,
		Expected:     h.expected,
		Healthy:      healthy(s, h.required),
		Draining:     s.Draining,
		Workers:      make([]WorkerStatus, 0, len(workers)),
		ListenQueues: []backlog.Queue{},
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
