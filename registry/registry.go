//go:build linux

package registry

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/internal/exitwatch"
	"github.com/notifyd/notifyd/protocol"
)

// Registry is the set of registered workers. It is safe for concurrent use.
type Registry struct {
	cfg     Config
	log     *slog.Logger
	files   stateFiles
	mirror  *mirror
	watcher *pidfdWatcher // nil when exits are found by sweeping
	lock    int           // the state directory's lock, or -1

	mu       sync.Mutex
	workers  map[int]*entry
	paged    map[int]*entry // the workers with an activity page
	ready    int            // workers that count, kept in step with every change
	draining bool
	instance instance

	// One limiter per line a worker can cause, so that a flood of one kind
	// never hides the other.
	failedLog, hungLog, activityLog *protocol.LogLimiter
	debugLog                        *protocol.LogLimiter // comings and goings, at debug level

	summary     atomic.Pointer[Summary]
	totals      totals
	pages       atomic.Int64 // len(paged), read without the lock
	exits       atomic.Uint64
	fileErrors  atomic.Uint64
	releaseOnce sync.Once // ReleaseDir
	closeOnce   sync.Once
}

// entry is a Worker plus what the registry needs to watch it.
type entry struct {
	Worker
	pidfd int       // -1 when sweeping
	beat  time.Time // last sign of life the heartbeat deadline counts from
	timer *time.Timer
	saved bool // the worker should have a state file, and the mirror was told
	// reported is set once the worker has sent its activity: the first
	// report only sets where the totals count from.
	reported bool
	// page is the worker's activity page, or nil. A worker with a page
	// reports its activity through it alone.
	page *protocol.Page
	// credit is how much the worker's counters may still grow, as time at
	// MaxActivityRate, as of creditAt.
	credit   time.Duration
	creditAt time.Time
	// generation is the instance's generation when the worker last became
	// ready: a reload counts only the workers of its own generation.
	generation uint64
}

// counts reports whether the worker counts towards the health answer.
func (e *entry) counts() bool { return e.State == Ready }

// New validates cfg, prepares the state directory and recovers the workers
// its state files name that are still the same live processes. It deletes
// the state files of every other one.
func New(cfg Config) (*Registry, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = time.Second
	}
	files, err := newStateFiles(cfg.Dir, cfg.Filename)
	if err != nil {
		return nil, err
	}
	if err := prepareDir(cfg.Dir); err != nil {
		return nil, err
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if lock < 0 {
		cfg.Logger.Warn("state directory not locked: it is read-only; make sure no other notifyd uses it", "dir", cfg.Dir)
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, files: files, workers: make(map[int]*entry), paged: make(map[int]*entry), lock: lock,
		instance:  instance{expected: cfg.Expected},
		failedLog: protocol.NewLogLimiter(5, time.Second), hungLog: protocol.NewLogLimiter(5, time.Second),
		activityLog: protocol.NewLogLimiter(5, time.Second), debugLog: protocol.NewLogLimiter(100, time.Second)}
	switch cfg.Detection {
	case Auto, Pidfd:
		if pidfdSupported() {
			if r.watcher, err = newPidfdWatcher(); err != nil {
				r.unlock()
				return nil, err
			}
		} else if cfg.Detection == Pidfd {
			r.unlock()
			return nil, errors.New("exit detection pidfd: this kernel has no pidfd_open (Linux 5.3 or later needed)")
		}
	}
	if r.watcher == nil {
		r.log.Info("exit detection by sweep: a worker's exit is seen at the next sweep", "interval", cfg.ReapInterval)
	}
	// The mirror's goroutine starts last: from here on, every error return
	// goes through Close, which stops it.
	r.mirror = newMirror(files, r.log, &r.fileErrors, cfg.retryInterval)
	if err := r.recover(); err != nil {
		r.Close()
		return nil, err
	}
	// Only the main process's notifyd knows that the instance starts; and
	// workers that were ready before notifyd started mean that it is
	// notifyd that starts, not the instance.
	r.instance.starting = cfg.MainPID != 0 && len(r.workers) == 0
	r.draining = files.drainMarked()
	r.publish()
	r.mirror.sync() // recovery's own rewrites and removals are done on return
	return r, nil
}

// prepareDir creates the state directory if needed and refuses one that any
// user could fill with files of their choosing.
func prepareDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create state directory: %w", err)
		}
		fi, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o002 == 0 {
		return nil
	}
	// Any user may create files in it. With the sticky bit and notifyd's
	// user as its owner, no one else can remove or rename notifyd's files,
	// and notifyd can remove theirs; recovery adopts only files of its own
	// user or root.
	owner := fi.Sys().(*syscall.Stat_t).Uid
	switch {
	case fi.Mode()&fs.ModeSticky == 0:
		return fmt.Errorf("state directory %s is world-writable without the sticky bit; use a private directory such as $RUNTIME_DIRECTORY", dir)
	case int(owner) != os.Geteuid():
		return fmt.Errorf("state directory %s is world-writable and belongs to uid %d, not to notifyd's uid %d; use a private directory such as $RUNTIME_DIRECTORY", dir, owner, os.Geteuid())
	}
	return nil
}

// unlock releases the state directory's lock. The caller holds r.mu, or
// is New.
func (r *Registry) unlock() {
	if r.lock >= 0 {
		unix.Close(r.lock)
		r.lock = -1
	}
}

// Summary returns the latest summary. It takes no lock and does no I/O.
func (r *Registry) Summary() Summary { return *r.summary.Load() }

// Workers returns a copy of every registered worker, ordered by pid.
func (r *Registry) Workers() []Worker {
	r.mu.Lock()
	r.readPages()
	out := make([]Worker, 0, len(r.workers))
	for _, e := range r.workers {
		out = append(out, e.Worker)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Worker) int { return a.PID - b.PID })
	return out
}

// Exits returns how many registered workers were found to have exited (or
// to have been replaced by another process under the same pid) without
// sending STOPPING=1 first.
func (r *Registry) Exits() uint64 { return r.exits.Load() }

// StateFileErrors returns how many state file writes and removals failed.
// A file that keeps failing is retried every second and counted each time.
func (r *Registry) StateFileErrors() uint64 { return r.fileErrors.Load() }

// HandleMessage applies one message from sender. It returns a
// *protocol.Rejection-wrapping error, and changes nothing, when the message
// names a pid that does not exist or that the sender may not speak for.
// STOPPING=1 for a pid that has already exited is not an error: the gunicorn
// master often reports a worker's exit after notifyd has seen it.
func (r *Registry) HandleMessage(m protocol.Message, sender protocol.Credentials) error {
	if m.Drain != nil {
		if err := r.mayDrain(sender); err != nil {
			return err
		}
		// A mark that cannot be saved is logged and counted as a state file
		// error; the drain itself has taken effect, so the message did too.
		r.SetDraining(*m.Drain)
		return nil
	}
	page := m.Page // kept by the worker's entry, or closed on return
	defer func() { page.Close() }()
	if done, err := r.instanceMessage(m, sender); done {
		return err
	}
	a, err := r.admit(m, sender)
	defer r.release(&a)
	if err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if a.stale != nil {
		r.drop(a.stale, exited)
	}
	e := r.workers[a.pid]
	switch {
	case a.known != nil && e != a.known:
		// The watcher saw the worker go since admit looked.
		e, a.gone = nil, true
	case a.known == nil && !a.gone && e != nil && e.StartTime != a.startTime:
		r.drop(e, reused)
		e = nil
	}
	if m.Lifecycle == protocol.Stopping {
		if e != nil {
			r.drop(e, stopped)
		}
		return nil
	}
	if a.gone {
		return fmt.Errorf("%w: pid %d has exited", ErrNoProcess, a.pid)
	}
	if e != nil && e.page != nil && page != nil && !e.page.Same(page) {
		return fmt.Errorf("%w: pid %d", ErrPageTwice, a.pid)
	}
	if e == nil {
		if !changesWorker(m) {
			return nil
		}
		e, err = r.add(a.pid, a.startTime, a.pinned)
		a.pinned = -1 // add owns it from the call on
		if errors.Is(err, errGone) {
			return fmt.Errorf("%w: pid %d exited while registering", ErrNoProcess, a.pid)
		} else if err != nil {
			return err
		}
	}
	if page != nil && e.page == nil {
		r.attach(e, page)
		page = nil
	}
	r.apply(e, m, time.Now())
	return nil
}

// pinned returns pid's entry when a pidfd watches it and its process has not
// exited. The pidfd then vouches for the entry being that very process, so a
// message for it needs no /proc read. An entry whose process has exited is
// dropped here, and nil returned: the message may come from a new process
// that took over the pid before the watcher reported the exit.
func (r *Registry) pinned(pid int) *entry {
	if r.watcher == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.workers[pid]
	if e == nil || e.pidfd < 0 {
		return nil
	}
	if exitwatch.Exited(e.pidfd) {
		r.drop(e, exited)
		return nil
	}
	return e
}

// changesWorker reports whether m would change a worker's record, so that a
// message carrying none of the keys notifyd keeps registers nothing.
// Activity alone is not such a change: it is kept for a registered worker,
// but never registers one.
func changesWorker(m protocol.Message) bool {
	return m.Lifecycle != protocol.NoLifecycle || m.Status != nil || m.Watchdog ||
		m.WatchdogUSec != 0 || m.Failed
}

// add registers pid. pinned, when not -1, is a pidfd opened for pid before
// its /proc was read; add owns it from the call on. Without one, add opens
// a pidfd now and reads /proc again: a start time that changed means the
// process that was checked has gone and another took its pid.
//
// Once the pidfd is in the watcher's epoll set, any exit after the /proc
// read is reported by the watcher, which drops the entry: epoll reports a
// readable pidfd for as long as it stays registered, so an exit between the
// read and the insertion into r.workers is not lost either.
func (r *Registry) add(pid int, startTime uint64, pinned int) (*entry, error) {
	e := &entry{Worker: Worker{PID: pid, StartTime: startTime, State: Starting}, pidfd: -1}
	if r.watcher != nil {
		fd := pinned
		if fd < 0 {
			var err error
			if fd, err = r.watcher.watch(pid); err != nil {
				return nil, err
			}
			if info, err := readProc(pid); err != nil || info.startTime != startTime {
				r.watcher.unwatch(fd)
				return nil, errGone
			}
		}
		e.pidfd = fd
	} else if ok, err := isProcess(pid); err != nil || !ok {
		return nil, errGone
	}
	r.workers[pid] = e
	return e, nil
}

// apply changes e as m says, then mirrors the change to the state file, the
// heartbeat timer and the summary. Activity touches none of those three: a
// message that carries only activity costs no file write, no timer and no
// new summary.
func (r *Registry) apply(e *entry, m protocol.Message, now time.Time) {
	if m.Activity != nil && e.page == nil {
		r.record(e, *m.Activity, now)
	}
	if !changesWorker(m) {
		return
	}
	before, was := e.counts(), e.Worker
	if m.Status != nil {
		e.Status = *m.Status
	}
	if m.WatchdogUSec != 0 {
		e.WatchdogUSec = m.WatchdogUSec
		e.beat = now
	}
	if m.Watchdog {
		e.LastWatchdog, e.beat = now, now
		if e.State == Hung {
			e.State = Ready
		}
	}
	switch m.Lifecycle {
	case protocol.Ready:
		// A worker repeats READY=1 so that a notifyd that lost it learns it
		// again; to a notifyd that holds it, the repetition is a sign of
		// life and nothing more.
		if e.State != Ready {
			r.debugLog.Log(r.log, slog.LevelDebug, "worker ready", "pid", e.PID)
			e.State, e.ReadyAt = Ready, now
			e.generation = r.instance.generation
		}
		e.beat = now
	case protocol.Reloading:
		e.State = Reloading
	}
	if m.Failed {
		e.State, e.Errno = Failed, m.Errno
		r.failedLog.Log(r.log, slog.LevelWarn, "worker declared itself failed", "pid", e.PID, "errno", m.Errno)
	}
	r.armHeartbeat(e, now)

	switch wantFile := e.State == Ready || e.State == Hung; {
	case wantFile && (!e.saved || filed(e.Worker) != filed(was)):
		r.writeFile(e)
	case !wantFile && e.saved:
		r.removeFile(e)
	}
	r.settle(e, before)
}

// filed is the part of w that its state file records: not the state (a
// file stands for ready and hung alike), nor the heartbeats, nor activity.
func filed(w Worker) Worker {
	w.State, w.LastWatchdog, w.Errno, w.Activity = 0, time.Time{}, 0, protocol.Activity{}
	return w
}

// settle brings the ready count in step after e changed, and publishes it.
func (r *Registry) settle(e *entry, before bool) {
	switch after := e.counts(); {
	case after && !before:
		r.ready++
	case before && !after:
		r.ready--
		defer r.busier()
	}
	r.publish()
}

// Draining reports whether the instance is drained.
func (r *Registry) Draining() bool { return r.Summary().Draining }

// SetDraining drains or undrains the instance, and records it in the state
// directory so that a restarted notifyd keeps draining. The in-memory state
// changes even when the file cannot be written; the error says so.
func (r *Registry) SetDraining(on bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining == on {
		return nil
	}
	r.draining = on
	r.log.Info("drain", "draining", on)
	r.publish()
	if err := r.files.setDrainMark(on); err != nil {
		r.fileErrors.Add(1)
		r.log.Error("drain state not saved; a restart will forget it", "error", err)
		return err
	}
	return nil
}

func (r *Registry) publish() {
	r.settleInstance()
	s := &Summary{Ready: r.ready, Workers: len(r.workers), Draining: r.draining,
		Expected: r.instance.expected, Starting: r.instance.starting, Reload: r.instance.reload}
	if old := r.summary.Load(); old != nil && *old == *s {
		return
	}
	r.summary.Store(s)
	if r.cfg.OnChange != nil {
		r.cfg.OnChange(*s)
	}
}

// deadline returns the worker's heartbeat deadline, or zero for none.
func (r *Registry) deadline(e *entry) time.Duration {
	usec := e.WatchdogUSec
	if usec == 0 {
		usec = r.cfg.WatchdogUSec
	}
	if usec > protocol.MaxWatchdogUSec { // WATCHDOG_USEC=infinity: none
		return 0
	}
	return time.Duration(usec) * time.Microsecond
}

// armHeartbeat (re)starts the timer that marks a ready worker hung when its
// deadline passes without a heartbeat. Without a deadline there is no timer,
// so an idle registry never wakes up.
func (r *Registry) armHeartbeat(e *entry, now time.Time) {
	d := r.deadline(e)
	if d == 0 || e.State != Ready {
		if e.timer != nil {
			e.timer.Stop()
		}
		return
	}
	left := e.beat.Add(d).Sub(now)
	if e.timer == nil {
		e.timer = time.AfterFunc(left, func() { r.checkHeartbeat(e) })
	} else {
		e.timer.Reset(left)
	}
}

func (r *Registry) checkHeartbeat(e *entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.workers[e.PID] != e || e.State != Ready {
		return
	}
	now := time.Now()
	if now.Before(e.beat.Add(r.deadline(e))) {
		r.armHeartbeat(e, now) // a heartbeat came after the timer fired
		return
	}
	e.State = Hung
	r.hungLog.Log(r.log, slog.LevelWarn, "worker missed its heartbeat deadline", "pid", e.PID, "deadline", r.deadline(e))
	r.settle(e, true)
}

// leaving is why a worker leaves the registry.
type leaving uint8

const (
	stopped leaving = iota // it said STOPPING=1
	exited                 // its process exited or became a zombie
	reused                 // its pid was found to belong to another process
)

func (l leaving) String() string {
	switch l {
	case stopped:
		return "stopped"
	case exited:
		return "exited"
	case reused:
		return "pid reused"
	}
	return "unknown"
}

// drop removes e from the registry, and has the mirror remove its state
// file. The health answer changes first; closing the pidfd and waking the
// mirror come after it. Every reason but STOPPING=1 counts as an exit.
func (r *Registry) drop(e *entry, why leaving) {
	if r.workers[e.PID] != e {
		return
	}
	before := e.counts()
	delete(r.workers, e.PID)
	if why != stopped {
		r.exits.Add(1)
	}
	r.detach(e)
	r.retire(e)
	e.State = Starting
	r.settle(e, before)
	if e.pidfd >= 0 {
		r.watcher.unwatch(e.pidfd)
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	if e.saved {
		r.removeFile(e)
	}
	r.debugLog.Log(r.log, slog.LevelDebug, "worker left", "pid", e.PID, "reason", why)
}

func (r *Registry) writeFile(e *entry) {
	r.mirror.save(e.Worker)
	e.saved = true
}

func (r *Registry) removeFile(e *entry) {
	r.mirror.remove(e.PID)
	e.saved = false
}

// Sync returns once the state files have been brought in step with every
// change made before the call, or the attempt has failed and been counted.
// The notify socket calls it before it acknowledges a BARRIER=1.
func (r *Registry) Sync() { r.mirror.sync() }

// pidfdReadable is called by the pidfd watcher. The pidfd may have been closed and
// its number reused since the event was queued, so it checks that the
// descriptor is still this worker's and that its process has really exited.
func (r *Registry) pidfdReadable(pid, pidfd int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.workers[pid]; e != nil && e.pidfd == pidfd && exitwatch.Exited(pidfd) {
		r.drop(e, exited)
	}
}

// sweep drops every worker whose process is gone, is a zombie or is another
// process under the same pid.
func (r *Registry) sweep() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.workers {
		if !alive(e.PID, e.StartTime) {
			r.drop(e, exited)
		}
	}
}

// Run watches for worker exits until ctx is cancelled. With pidfds it sleeps
// in epoll_wait until a process exits; otherwise it sweeps every
// ReapInterval.
func (r *Registry) Run(ctx context.Context) error {
	if r.watcher == nil {
		t := time.NewTicker(r.cfg.ReapInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				r.sweep()
			}
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.watcher.run(r.pidfdReadable) }()
	select {
	case <-ctx.Done():
		r.watcher.stop()
		<-done
		return nil
	case err := <-done:
		return err
	}
}

// Close releases the registry's descriptors and timers. State files stay, so
// the next start recovers the workers. Close is idempotent; call it after Run
// has returned.
func (r *Registry) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range r.workers {
			if e.pidfd >= 0 {
				r.watcher.unwatch(e.pidfd)
				e.pidfd = -1
			}
			if e.timer != nil {
				e.timer.Stop()
			}
			r.detach(e)
		}
		if r.watcher != nil {
			r.watcher.close()
		}
		if t := r.instance.graceTimer; t != nil {
			t.Stop()
		}
	})
	r.ReleaseDir()
	return nil
}

// ReleaseDir finishes the state files' last writes and releases the state
// directory's lock, so that the next notifyd (a USR2's new master's) may
// take the directory while this one still answers the HTTP connections it
// accepted, from memory. Call it once Run has returned and no message is
// being applied any more; Close calls it too. It is idempotent.
func (r *Registry) ReleaseDir() {
	r.releaseOnce.Do(func() {
		r.mirror.close()
		r.mu.Lock()
		defer r.mu.Unlock()
		r.unlock() // last: the directory is in step, and the next notifyd may take it
	})
}
