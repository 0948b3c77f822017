package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// target is one health endpoint under probe, and what the probes saw.
type target struct {
	name     string // in the CSV
	label    string // in the report
	what     string // what answers there, for the report
	url      string
	addr     string // host:port
	req      []byte // the request, sent whole in one write
	timeout  time.Duration
	samples  []sample
	firstErr string // the first failure that was not a timeout, for the report
}

// sample is one probe.
type sample struct {
	at      time.Duration // when it was sent, from the start of probing
	latency time.Duration // until the whole answer was in, or until it failed
	status  int           // the HTTP status; 0 when none came
	timeout bool          // no whole answer within the timeout
}

func (s sample) ok() bool { return s.status == http.StatusOK }

// outcome is how the CSV names what became of the probe: the status code,
// "timeout" or "error".
func (s sample) outcome() string {
	switch {
	case s.timeout:
		return "timeout"
	case s.status == 0:
		return "error"
	default:
		return strconv.Itoa(s.status)
	}
}

// newTarget returns a target probed the way a load balancer's health check
// does: a new connection per request, and a timeout for the whole exchange.
// The client is driven by hand, one dial, one write and reads on one
// goroutine, so that what it adds to a latency stays small next to what the
// server takes.
func newTarget(name, label, what, rawURL string, timeout time.Duration) (*target, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse target URL %s: %w", rawURL, err)
	}
	return &target{
		name:    name,
		label:   label,
		what:    what,
		url:     rawURL,
		addr:    u.Host,
		req:     []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: notifyd-saturation-bench\r\nConnection: close\r\n\r\n"),
		timeout: timeout,
	}, nil
}

// probe sends a request every interval, from offset until duration after
// start, without waiting for earlier answers (an open loop), and records
// every one. It returns when all have been answered or have failed, or, once
// ctx ends, when those in flight have been cancelled.
func (t *target) probe(ctx context.Context, start time.Time, offset, interval, duration time.Duration) {
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for at := offset; at < duration; at += interval {
		if benchkit.Pause(ctx, time.Until(start.Add(at))) != nil {
			break
		}
		wg.Go(func() {
			s, err := t.once(ctx, start)
			mu.Lock()
			defer mu.Unlock()
			t.samples = append(t.samples, s)
			if err != nil && !s.timeout && t.firstErr == "" {
				t.firstErr = err.Error()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(t.samples, func(a, b sample) int { return cmp.Compare(a.at, b.at) })
}

// once makes one request on a new connection and reads the whole answer.
func (t *target) once(ctx context.Context, start time.Time) (sample, error) {
	begin := time.Now()
	s := sample{at: begin.Sub(start)}
	status, err := t.exchange(ctx, begin.Add(t.timeout))
	s.latency = time.Since(begin)
	if err != nil {
		var ne net.Error
		s.timeout = errors.As(err, &ne) && ne.Timeout()
		return s, err
	}
	s.status = status
	if !s.ok() {
		return s, fmt.Errorf("answered %d", status)
	}
	return s, nil
}

// exchange dials, sends the request and reads the answer to its end, all
// before deadline, and returns the status.
func (t *target) exchange(ctx context.Context, deadline time.Time) (int, error) {
	d := net.Dialer{Deadline: deadline}
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := c.Write(t.req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10)); err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// writeCSV writes every sample of every target, in the order they were
// sent, as seconds,target,latency_ms,outcome.
func writeCSV(path string, targets []*target) error {
	type row struct {
		t *target
		s sample
	}
	var rows []row
	for _, t := range targets {
		for _, s := range t.samples {
			rows = append(rows, row{t, s})
		}
	}
	slices.SortStableFunc(rows, func(a, b row) int { return cmp.Compare(a.s.at, b.s.at) })

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create samples file: %w", err)
	}
	bw := bufio.NewWriter(f)
	w := csv.NewWriter(bw)
	w.Write([]string{"seconds", "target", "latency_ms", "outcome"})
	for _, r := range rows {
		w.Write([]string{
			strconv.FormatFloat(r.s.at.Seconds(), 'f', 4, 64),
			r.t.name,
			strconv.FormatFloat(benchkit.Millis(r.s.latency), 'f', 3, 64),
			r.s.outcome(),
		})
	}
	w.Flush()
	err = errors.Join(w.Error(), bw.Flush(), f.Close())
	if err != nil {
		return fmt.Errorf("write samples to %s: %w", path, err)
	}
	return nil
}
