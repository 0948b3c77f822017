package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The health load: this many keep-alive connections, each sending its next
// request as soon as the answer is in, for rounds of a fixed duration.
const (
	loadConns   = 4
	loadRound   = 2 * time.Second
	loadRounds  = 5
	loadWarmUp  = 500 * time.Millisecond
	maxRequests = 10_000_000 // per connection and round
)

// loadTarget is one instance under health load and what it achieved.
type loadTarget struct {
	label   string
	workers int
	d       *daemon
	url     string
	want    string // the exact body every answer must have
	clients []*http.Client
	dials   atomic.Int64
	rates   []float64 // requests per second, one per round
	mem     memory    // after the last round
}

func newLoadTarget(label string, d *daemon, workers int) *loadTarget {
	t := &loadTarget{
		label:   label,
		workers: workers,
		d:       d,
		url:     "http://" + d.addr + "/",
		want:    strconv.Itoa(workers) + " workers ready\n",
	}
	dialer := &net.Dialer{Timeout: httpTimeout}
	for range loadConns {
		// One transport per connection, limited to one connection, so each
		// load goroutine keeps its own connection alive for the whole run.
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				t.dials.Add(1)
				return dialer.DialContext(ctx, network, addr)
			},
			MaxConnsPerHost:       1,
			MaxIdleConnsPerHost:   1,
			DisableCompression:    true,
			ResponseHeaderTimeout: httpTimeout,
		}
		t.clients = append(t.clients, &http.Client{Transport: tr, Timeout: httpTimeout})
	}
	return t
}

func (t *loadTarget) close() {
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
}

// round runs the load for dur and returns the requests per second.
func (t *loadTarget) round(dur time.Duration) (float64, error) {
	var (
		wg    sync.WaitGroup
		total atomic.Int64
		errs  = make(chan error, len(t.clients))
	)
	start := time.Now()
	deadline := start.Add(dur)
	for _, c := range t.clients {
		wg.Go(func() {
			n, err := t.hammer(c, deadline)
			total.Add(n)
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		return 0, t.d.Explain(fmt.Errorf("%s: %w", t.d.Name, err))
	default:
	}
	return float64(total.Load()) / elapsed.Seconds(), nil
}

// hammer sends requests on one connection until deadline and checks every
// answer.
func (t *loadTarget) hammer(c *http.Client, deadline time.Time) (int64, error) {
	var n int64
	for n < maxRequests && time.Now().Before(deadline) {
		resp, err := c.Get(t.url)
		if err != nil {
			return n, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
		resp.Body.Close()
		if err != nil {
			return n, fmt.Errorf("read health body: %w", err)
		}
		if resp.StatusCode != http.StatusOK || string(body) != t.want {
			return n, fmt.Errorf("health answered %d %q, want 200 %q", resp.StatusCode, body, t.want)
		}
		n++
	}
	return n, nil
}

func measureThroughput(ctx context.Context, l *lab, workers int) ([]*loadTarget, error) {
	l.Progress("health throughput: starting %d sleepers", workers)
	ss, err := l.spawn(ctx, workers, sleeperLife)
	if err != nil {
		return nil, err
	}
	defer l.reap(ss...)
	flags := []string{"--exit-detection", "pidfd"}
	many, err := l.startDaemon(ctx, "load-many", flags...)
	if err != nil {
		return nil, err
	}
	one, err := l.startDaemon(ctx, "load-one", flags...)
	if err != nil {
		return nil, err
	}
	l.Progress("health throughput: registering %d workers", workers)
	if err := notify(many, "READY=1\nPID=%d", pids(ss)); err != nil {
		return nil, err
	}
	if err := notify(one, "READY=1\nPID=%d", pids(ss[:1])); err != nil {
		return nil, err
	}
	targets := []*loadTarget{newLoadTarget("X", many, workers), newLoadTarget("Y", one, 1)}
	for _, t := range targets {
		defer t.close()
		if err := checkHealth(t.d, t.workers); err != nil {
			return nil, err
		}
		// Opens the connections; not counted.
		if _, err := t.round(loadWarmUp); err != nil {
			return nil, err
		}
	}
	for r := range loadRounds {
		for _, t := range targets {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			rate, err := t.round(loadRound)
			if err != nil {
				return nil, err
			}
			t.rates = append(t.rates, rate)
		}
		l.Progress("health throughput: round %d/%d: X %.0f/s, Y %.0f/s", r+1, loadRounds, targets[0].rates[r], targets[1].rates[r])
	}
	for _, t := range targets {
		t.close()
		if t.mem, err = readMemory(t.d.pid()); err != nil {
			return nil, err
		}
		if err := t.d.Stop(); err != nil {
			return nil, err
		}
	}
	return targets, nil
}
