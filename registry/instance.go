//go:build linux

package registry

import (
	"fmt"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// instance is what the registry knows about the instance as a whole, beside
// its workers: its configured capacity, whether it has started, and the
// reload in progress. It is guarded by Registry.mu.
//
// A reload is a known state, not an outage. gunicorn's HUP starts the new
// workers and stops the old ones at once, long before the new ones have
// booted; counting the truth would fail the health check on every deploy.
// So from the main process's RELOADING=1 the answer keeps the stopping
// generation's count (Reload.Kept) until Config.Required workers of the new
// generation are ready, or until Config.ReloadGrace ends. Requests that
// arrive meanwhile wait in the application's listen queue for the new
// workers. A reload whose new workers never become ready tells the truth
// when the grace ends, and never later: the timer ends it.
type instance struct {
	expected   int
	starting   bool
	reload     Reload
	generation uint64      // bumped at every reload
	graceTimer *time.Timer // ends the reload of generation at its grace
}

// instanceMessage applies m when it is about the instance rather than a
// worker: X_NOTIFYD_EXPECT=, or RELOADING=1 about the main process. done
// reports whether m was such a message; err is then its rejection, if any.
func (r *Registry) instanceMessage(m protocol.Message, sender protocol.Credentials) (done bool, err error) {
	if m.Expect != nil {
		if err := r.mayInstance(sender, "set the expected workers"); err != nil {
			return true, err
		}
		r.SetExpected(*m.Expect)
		return true, nil
	}
	if m.Lifecycle != protocol.Reloading {
		return false, nil
	}
	pid, err := r.subject(m, sender)
	if err != nil || !r.isMain(pid, m.PID == 0 || m.PID == sender.PID) {
		return false, nil
	}
	if err := r.mayInstance(sender, "reload the instance"); err != nil {
		return true, err
	}
	if ok, err := isProcess(pid); err != nil || !ok {
		return true, fmt.Errorf("%w: main process %d has exited or never existed", ErrNoProcess, pid)
	}
	r.Reload(pid)
	return true, nil
}

// isMain reports whether pid is the application's main process: the
// configured one, or without one a process that is not a worker and speaks
// for itself, as a main process sends RELOADING=1 to systemd.
func (r *Registry) isMain(pid int, itself bool) bool {
	if r.cfg.MainPID != 0 {
		return pid == r.cfg.MainPID
	}
	if !itself {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers[pid] == nil
}

// Reload begins an instance reload on behalf of the main process pid (0 when
// not known): see instance. A reload during a reload starts the grace anew
// and keeps the larger of the two counts. With no grace configured it is
// only logged.
func (r *Registry) Reload(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := &r.instance
	if r.cfg.ReloadGrace <= 0 {
		r.log.Info("instance reload; the count is not kept (no reload grace)", "main_pid", pid)
		return
	}
	kept := r.ready
	if in.reload.Active {
		kept = max(kept, in.reload.Kept)
	}
	now := time.Now()
	in.generation++
	in.reload = Reload{Active: true, Since: now, GraceEnds: now.Add(r.cfg.ReloadGrace), Kept: kept}
	if in.graceTimer != nil {
		in.graceTimer.Stop()
	}
	generation := in.generation
	in.graceTimer = time.AfterFunc(r.cfg.ReloadGrace, func() { r.graceEnded(generation) })
	r.log.Info("instance reload", "main_pid", pid, "kept", kept, "required", r.cfg.Required, "grace", r.cfg.ReloadGrace)
	r.publish()
}

// graceEnded ends the reload of generation, if it is still in progress.
func (r *Registry) graceEnded(generation uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := &r.instance
	if !in.reload.Active || in.generation != generation {
		return
	}
	r.log.Warn("reload grace ended before the new workers were ready; the count is the truth again",
		"fresh", in.reload.Fresh, "required", r.cfg.Required, "ready", r.ready, "grace", r.cfg.ReloadGrace)
	in.reload = Reload{}
	r.publish()
}

// SetExpected sets the number of workers the server is configured to run.
func (r *Registry) SetExpected(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.instance.expected == n {
		return
	}
	r.log.Info("expected workers", "expected", n, "was", r.instance.expected)
	r.instance.expected = n
	r.publish()
}

// settleInstance brings the instance's state in step with the workers
// before a summary is published: it counts the new generation during a
// reload, and ends the reload, or the start, once enough are ready.
func (r *Registry) settleInstance() {
	in := &r.instance
	if in.starting && r.ready >= r.cfg.Required {
		in.starting = false
	}
	if !in.reload.Active {
		return
	}
	fresh := 0
	for _, e := range r.workers {
		if e.counts() && e.generation == in.generation {
			fresh++
		}
	}
	in.reload.Fresh = fresh
	if fresh < r.cfg.Required {
		return
	}
	r.log.Info("reload done", "fresh", fresh, "required", r.cfg.Required, "took", time.Since(in.reload.Since))
	in.reload = Reload{}
	in.graceTimer.Stop()
}
