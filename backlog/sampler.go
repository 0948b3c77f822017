//go:build linux

package backlog

import (
	"context"
	"log/slog"
	"time"
)

// SampleInterval is how often a Sampler reads while every worker is busy.
// It bounds how short a burst Queue.Peak surely shows, and how much a Unix
// connection's age can fall short. A sample reads the listeners and the
// Unix connections, not the TCP ones (see Reader.read): tens of
// microseconds, so ten a second cost well under 1% of a core.
const SampleInterval = 100 * time.Millisecond

// Workers is what a Sampler asks of whoever knows the workers' activity.
type Workers interface {
	// AllBusy reports whether every worker has a request in flight: only
	// then can connections wait in a listen queue. It must be cheap; the
	// Sampler asks before each read.
	AllBusy() bool
}

// Sampler reads a Reader's queues every SampleInterval while every worker
// is busy, and never otherwise, so that the peak catches bursts that come
// and go between two scrapes, while an idle notifyd is never woken.
type Sampler struct {
	r    *Reader
	wake chan struct{}
	log  *slog.Logger
}

// NewSampler returns a Sampler of r. It does nothing until Run.
func NewSampler(r *Reader, log *slog.Logger) *Sampler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sampler{r: r, wake: make(chan struct{}, 1), log: log}
}

// Wake tells the Sampler that every worker may have become busy. It never
// blocks, and wakes that come together make one.
func (s *Sampler) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run samples, each time Wake is called, for as long as workers says every
// worker is busy, at most once per SampleInterval. It returns nil when ctx
// is cancelled. A failed read is logged once until a read succeeds.
func (s *Sampler) Run(ctx context.Context, workers Workers) error {
	var last time.Time
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		}
		for workers.AllBusy() {
			// Wakes come with every request a saturated server starts:
			// they never make reads more frequent than the interval.
			if wait := SampleInterval - time.Since(last); wait > 0 {
				if !sleep(ctx, wait) {
					return nil
				}
				continue
			}
			last = time.Now()
			_, err := s.r.read(false)
			switch {
			case err != nil && !failing:
				s.log.Warn("listen queues not sampled", "error", err)
			case err == nil && failing:
				s.log.Info("listen queues sampled again")
			}
			failing = err != nil
		}
	}
}

// sleep waits for d, and reports false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
