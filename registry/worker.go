//go:build linux

package registry

import (
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// State is where a worker is in its life, as far as notifyd knows.
type State uint8

// The states of a registered worker. Only Ready counts towards the health
// answer.
const (
	Starting  State = iota // sent something, but not READY=1 yet
	Ready                  // last lifecycle message was READY=1
	Reloading              // sent RELOADING=1; not ready until the next READY=1
	Hung                   // ready, but missed its heartbeat deadline
	Failed                 // declared itself failed (WATCHDOG=trigger, ERRNO=)
)

func (s State) String() string {
	switch s {
	case Starting:
		return "starting"
	case Ready:
		return "ready"
	case Reloading:
		return "reloading"
	case Hung:
		return "hung"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Worker is one registered process, as the registry last saw it.
type Worker struct {
	PID int
	// StartTime is field 22 of /proc/<pid>/stat at registration. With PID it
	// names one process, so a reused pid is never taken for the old worker.
	StartTime uint64
	State     State
	// ReadyAt is when the last READY=1 arrived; zero if none has.
	ReadyAt time.Time
	// Status is the last STATUS= text.
	Status string
	// WatchdogUSec is the heartbeat deadline the worker declared, or zero.
	WatchdogUSec uint64
	// LastWatchdog is when the last WATCHDOG=1 arrived; zero if none has.
	LastWatchdog time.Time
	// Errno is the ERRNO= a failed worker sent, if any.
	Errno int
	// Activity is the worker's last activity report, absolute since it
	// booted; zero until it sends one. It never affects State.
	Activity protocol.Activity
}

// Summary is the registry's state in numbers. The registry publishes a new
// one after every change, so reading it costs one atomic load.
type Summary struct {
	// Ready is the number of workers that count: ready, alive, the same
	// process that registered, and within their heartbeat deadline.
	Ready int
	// Workers is the number of registered workers in any state.
	Workers int
	// Draining is set while the instance is drained: the health check
	// fails, whatever the count, so load balancers send it no new work.
	Draining bool
	// Expected is the number of workers the server is configured to run.
	Expected int
	// Starting is set from notifyd's start until Ready first reaches
	// Config.Required, when notifyd knows the main process (Config.MainPID,
	// as in gunicorn's managed mode) and recovered no worker from its state
	// files: a notifyd of its own cannot tell an instance that starts from
	// one that has not said anything yet.
	Starting bool
	// Reload is the instance reload in progress, if any.
	Reload Reload
}

// Counted is the number of ready workers the health answer counts: Ready,
// or during a reload the stopping generation's count when that is more.
func (s Summary) Counted() int {
	if s.Reload.Active {
		return max(s.Ready, s.Reload.Kept)
	}
	return s.Ready
}

// Reload is an instance reload: the application's main process said
// RELOADING=1, and its workers are being replaced by a new generation.
type Reload struct {
	// Active is set from the RELOADING=1 until Fresh reaches
	// Config.Required or the grace period ends; the other fields are zero
	// when it is not set.
	Active bool
	// Since is when the reload began; GraceEnds when it ends at the latest.
	Since, GraceEnds time.Time
	// Kept is the ready count of the stopping generation, which the health
	// answer keeps meanwhile.
	Kept int
	// Fresh is the number of ready workers of the new generation: those that
	// became ready after the reload began.
	Fresh int
}
