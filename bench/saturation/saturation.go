package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/notifyd/notifyd/backlog"
)

// latencyResult is the health-check latency measurement under saturation.
type latencyResult struct {
	targets    []*target // (a) the application, (b) the seed-style server, (c) notifyd, the bare reference
	queued     []uint32  // the application's listen queue, sampled while probing
	queueLimit uint32
	slept      int64 // /sleep requests answered while probing
	sleepFails int64 // /sleep requests that failed while probing
}

// measureSaturation fills the application's workers and its listen queue
// with slow requests, probes the health endpoints side by side, then
// lets the workers work off the queue.
func measureSaturation(ctx context.Context, l *lab, st *stack, opts options) (*latencyResult, error) {
	addr, err := backlog.ParseAddr(st.appAddr)
	if err != nil {
		return nil, fmt.Errorf("application address: %w", err)
	}
	queue := backlog.NewReader([]backlog.Addr{addr})
	waiting := opts.sleepers - appWorkers

	l.Progress("latency: %d clients loop on %s against %d workers", opts.sleepers, sleepPath(opts.sleep), appWorkers)
	ld := startLoad(ctx, st.appAddr, opts.sleepers, opts.sleep)
	defer ld.stop()
	full := func(q backlog.Queue) bool { return q.Queued >= uint32(waiting) }
	if err := awaitQueue(ctx, queue, startTimeout, fmt.Sprintf("saturation not reached: want %d waiting", waiting), full); err != nil {
		return nil, st.gunicorn.Explain(err)
	}

	l.Progress("latency: probing the health endpoints every %s for %s", opts.interval, opts.duration)
	targets, err := newTargets(st, opts.timeout)
	if err != nil {
		return nil, err
	}
	res := &latencyResult{targets: targets}
	sampler := startQueueSampler(queue)
	sleptBefore, failedBefore := ld.completed.Load(), ld.failed.Load()
	probeAll(ctx, res.targets, opts)
	res.slept, res.sleepFails = ld.completed.Load()-sleptBefore, ld.failed.Load()-failedBefore
	serr := sampler.stop()
	res.queued, res.queueLimit = sampler.queued, sampler.limit
	ld.stop()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if serr != nil {
		return nil, serr
	}
	for _, t := range res.targets {
		l.Progress("latency: %s: %d requests, %d answered 200", t.label, len(t.samples), countOK(t.samples))
	}
	if err := awaitDrained(ctx, l, st, queue, opts); err != nil {
		return nil, err
	}
	return res, nil
}

// newTargets returns the endpoints to probe: (a), (b), (c) and the
// reference.
func newTargets(st *stack, timeout time.Duration) ([]*target, error) {
	var targets []*target
	for _, t := range []struct{ name, label, what, url string }{
		{"app", "(a) application", "`" + appHealthPath + "` of `app.py`, served by the busy sync workers", st.appURL},
		{"seed", "(b) seed-style", "wsgiref in a thread of the gunicorn master, counting its own pid files with `glob`", st.seedURL},
		{"notifyd", "(c) notifyd", "notifyd's health endpoint", st.notifydURL},
		{"bare", "reference", "the bare `net/http` server of section 2: no health logic, the machine's floor", st.bareURL},
	} {
		tg, err := newTarget(t.name, t.label, t.what, t.url, timeout)
		if err != nil {
			return nil, err
		}
		targets = append(targets, tg)
	}
	return targets, nil
}

// probeAll probes every target for the run's duration, at the same rate, the
// schedules offset evenly within one interval so that their requests do not
// all leave at the same instant.
func probeAll(ctx context.Context, targets []*target, opts options) {
	var wg sync.WaitGroup
	start := time.Now()
	for i, t := range targets {
		offset := opts.interval * time.Duration(i) / time.Duration(len(targets))
		wg.Go(func() { t.probe(ctx, start, offset, opts.interval, opts.duration) })
	}
	wg.Wait()
}

// awaitDrained waits until the workers have worked off the queue left by the
// dropped clients (their requests still run once accepted), so the
// throughput measurement starts on an idle machine.
func awaitDrained(ctx context.Context, l *lab, st *stack, queue *backlog.Reader, opts options) error {
	limit := time.Duration(opts.sleepers/appWorkers+2)*opts.sleep + startTimeout
	l.Progress("latency: waiting for the workers to work off the queue (at most %s)", limit)
	empty := func(q backlog.Queue) bool { return q.Queued == 0 }
	if err := awaitQueue(ctx, queue, limit, "the workers did not work off the queue", empty); err != nil {
		return st.gunicorn.Explain(err)
	}
	_, err := awaitAnswer(ctx, "(a) the application's "+appHealthPath, st.appURL, appHealthBody)
	return err
}

func countOK(ss []sample) int {
	n := 0
	for _, s := range ss {
		if s.ok() {
			n++
		}
	}
	return n
}
