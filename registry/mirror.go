//go:build linux

package registry

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// defaultRetryInterval is how long the mirror waits before it tries again to
// write or remove the state files that failed (a full or read-only
// directory). It wakes up only while something is failing.
const defaultRetryInterval = time.Second

// gatherTime is how long the mirror lets changes gather once the first one
// is recorded, unless a barrier waits for it. A burst of registrations then
// costs one wake-up of the mirror per gathering rather than one per worker,
// and a file trails its worker by about this much.
const gatherTime = time.Millisecond

// mirror keeps the state directory in step with the registry, one goroutine
// behind it. The registry records what each worker's file should say and
// goes on; the mirror writes and removes the files. That keeps file system
// latency off the datagram path, lets two cores share the work, and folds
// several changes to one worker into one write.
//
// A file that cannot be written or removed is retried every second,
// so the directory catches up by itself once it has room again. Each failed
// attempt is counted in errors.
type mirror struct {
	files  stateFiles
	log    *slog.Logger
	errors *atomic.Uint64
	every  time.Duration // between retries

	mu      sync.Mutex
	settled sync.Cond       // signalled when done moves
	pending map[int]*Worker // by pid; nil means remove the file
	queued  uint64          // changes recorded so far
	done    uint64          // changes tried so far
	closed  bool

	kick  chan struct{} // one token: pending has something
	hurry chan struct{} // one token: sync waits, so write without gathering
	stop  chan struct{}
	exit  chan struct{} // closed when run has returned

	// Only run's goroutine touches these.
	retry   map[int]*Worker // failed, and not changed since
	failing bool            // the last attempt left something failed
}

func newMirror(files stateFiles, log *slog.Logger, errors *atomic.Uint64, every time.Duration) *mirror {
	if every <= 0 {
		every = defaultRetryInterval
	}
	m := &mirror{
		every:   every,
		files:   files,
		log:     log,
		errors:  errors,
		pending: make(map[int]*Worker),
		kick:    make(chan struct{}, 1),
		hurry:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		exit:    make(chan struct{}),
	}
	m.settled.L = &m.mu
	go m.run()
	return m
}

// save records that w's state file should say what w says now.
func (m *mirror) save(w Worker) { m.put(w.PID, &w) }

// remove records that pid should have no state file.
func (m *mirror) remove(pid int) { m.put(pid, nil) }

func (m *mirror) put(pid int, w *Worker) {
	m.mu.Lock()
	m.pending[pid] = w
	m.queued++
	m.mu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// sync returns once every change recorded before the call has been tried:
// written or removed, or counted and logged as failed.
func (m *mirror) sync() {
	select {
	case m.hurry <- struct{}{}:
	default:
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for want := m.queued; m.done < want && !m.closed; {
		m.settled.Wait()
	}
}

func (m *mirror) run() {
	defer close(m.exit)
	retry := time.NewTimer(m.every)
	retry.Stop()
	armed := false // retry will fire: failures wait at most one interval
	gather := time.NewTimer(gatherTime)
	gather.Stop()
	for {
		retrying := false
		select {
		case <-m.kick:
			gather.Reset(gatherTime)
			select {
			case <-gather.C:
			case <-m.hurry:
				gather.Stop()
			case <-m.stop:
				m.finish()
				return
			}
		case <-m.hurry:
		case <-retry.C:
			retrying, armed = true, false
		case <-m.stop:
			m.finish()
			return
		}
		m.flush(retrying)
		if len(m.retry) > 0 && !armed {
			retry.Reset(m.every)
			armed = true
		}
	}
}

// finish writes what is pending a last time and releases every sync.
func (m *mirror) finish() {
	m.flush(true)
	m.mu.Lock()
	m.closed = true
	m.settled.Broadcast()
	m.mu.Unlock()
}

// flush takes every pending change and applies it to the directory. With
// retrying, it tries again every earlier failure that no newer change
// replaces; otherwise those wait for the retry timer, so that each failing
// change is tried once per interval however often the mirror wakes. The
// ones that fail are kept for the next retry.
func (m *mirror) flush(retrying bool) {
	m.mu.Lock()
	batch, upto := m.pending, m.queued
	m.pending = make(map[int]*Worker, len(batch))
	m.mu.Unlock()
	for pid, w := range m.retry {
		if _, newer := batch[pid]; !newer && retrying {
			batch[pid] = w
		}
		if _, newer := batch[pid]; newer {
			delete(m.retry, pid)
		}
	}
	for pid, w := range batch {
		err := m.apply(pid, w)
		if err == nil {
			continue
		}
		m.errors.Add(1)
		if m.retry == nil {
			m.retry = make(map[int]*Worker)
		}
		m.retry[pid] = w
		if !m.failing {
			m.log.Error("state files not in step with the registry; it keeps every worker in memory and retries", "every", m.every, "pid", pid, "error", err)
			m.failing = true
		}
	}
	if m.failing && len(m.retry) == 0 {
		m.failing = false
		m.log.Info("state files in step with the registry again")
	}
	m.mu.Lock()
	m.done = upto
	m.settled.Broadcast()
	m.mu.Unlock()
}

// apply writes w as pid's state file, or removes the file when w is nil.
func (m *mirror) apply(pid int, w *Worker) error {
	if w == nil {
		return m.files.remove(pid)
	}
	return m.files.write(w)
}

// close tries every change recorded so far once more, then stops the mirror.
func (m *mirror) close() {
	close(m.stop)
	<-m.exit
}
