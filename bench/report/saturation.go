package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/backlog"
)

// The saturated application: examples/gunicorn/hello.py with bench/seed's
// config, which installs notifyd's hooks and the seed-style health check.
const (
	appWorkers   = 2
	sleepers     = 6 // clients looping on /sleep: more than the workers
	sleepSeconds = 5
	probeEvery   = 20 * time.Millisecond
	probeTimeout = time.Second
	seedConfig   = "bench/seed/gunicorn.conf.py"
)

var (
	gunicornListens = regexp.MustCompile(`Listening at: http://(\S+) \(`)
	seedListens     = regexp.MustCompile(`worker healthcheck listening at http://(\S+)`)
)

// app is a gunicorn running hello.py beside a notifyd, and its endpoints.
type app struct {
	*proc
	addr, seedURL string
	notifyd       *server
}

// startApp starts a notifyd requiring workers, with args added, then
// gunicorn on bind with the seed config and that many sync workers, and
// waits until both health checks count them all.
func startApp(l *lab, workers int, bind string, args ...string) (*app, error) {
	nd, err := l.startNotifyd(nil, append([]string{"--require", strconv.Itoa(workers)}, args...)...)
	if err != nil {
		return nil, err
	}
	seedDir, err := l.tempDir()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("gunicorn", "--config", filepath.Join(l.root, seedConfig),
		"--chdir", filepath.Join(l.root, "examples/gunicorn"), "--bind", bind,
		"--workers", strconv.Itoa(workers), "--worker-class", "sync", "hello:app")
	cmd.Env = append(cleanEnv(), "NOTIFYD_SOCKET="+nd.socket, "SEED_HEALTHCHECK_BIND=127.0.0.1:0",
		"SEED_HEALTHCHECK_DIRECTORY="+seedDir, "SEED_HEALTHCHECK_REQUIRE="+strconv.Itoa(workers),
		"PYTHONDONTWRITEBYTECODE=1")
	// SIGINT is gunicorn's quick shutdown: a sleeping worker is not waited for.
	p, err := l.start(cmd, syscall.SIGINT, "")
	if err != nil {
		return nil, err
	}
	a := &app{proc: p, notifyd: nd}
	if a.addr, err = p.awaitLog(gunicornListens); err != nil {
		return nil, err
	}
	seed, err := p.awaitLog(seedListens)
	if err != nil {
		return nil, err
	}
	a.seedURL = "http://" + seed + "/"
	want := fmt.Sprintf("%d workers ready\n", workers)
	if err := awaitAnswer(nd.url, want); err != nil {
		return nil, err
	}
	return a, awaitAnswer(a.seedURL, want)
}

// target is one endpoint under probe, and what the probes saw.
type target struct {
	name, label, what, addr string
	samples                 []sample
}

type sample struct {
	at, latency time.Duration // sent at, from the start of probing; until the whole answer or the failure
	outcome     string        // the status code, "timeout" or "error"
}

// startContenders starts the application with notifyd and the seed-style
// check, and the bare server beside it; stop ends them all.
func startContenders(l *lab) (a *app, bare *server, stop func(), err error) {
	if a, err = startApp(l, appWorkers, "127.0.0.1:0"); err != nil {
		return nil, nil, nil, err
	}
	if bare, err = l.startBare(); err != nil {
		a.stop()
		a.notifyd.stop()
		return nil, nil, nil, err
	}
	return a, bare, func() { bare.stop(); a.stop(); a.notifyd.stop() }, nil
}

func saturation(ctx context.Context, l *lab, o options, csvPath string) (*section, error) {
	a, bare, stop, err := startContenders(l)
	if err != nil {
		return nil, err
	}
	defer stop()
	host := func(url string) string { return url[len("http://") : len(url)-1] }
	targets := []*target{
		{name: "app", label: "(a) application", what: "`/` of `hello.py`, served by the busy sync workers", addr: a.addr},
		{name: "seed", label: "(b) seed-style", what: "wsgiref in a thread of the gunicorn master, counting its own pid files with `glob`", addr: host(a.seedURL)},
		{name: "notifyd", label: "(c) notifyd", what: "notifyd's health check", addr: host(a.notifyd.url)},
		{name: "bare", label: "floor", what: "the bare server (`bench/bare`): notifyd's HTTP server and runtime settings, no health logic", addr: host(bare.url)},
	}

	// Fill the workers, then the listen queue.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	defer func() { stopLoad(); load.Wait() }()
	for range sleepers {
		load.Go(func() {
			c := http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			for loadCtx.Err() == nil {
				req, _ := http.NewRequestWithContext(loadCtx, http.MethodGet, fmt.Sprintf("http://%s/sleep?s=%d", a.addr, sleepSeconds), nil)
				if resp, err := c.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				} else {
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	addr, err := backlog.ParseAddr(a.addr)
	if err != nil {
		return nil, err
	}
	queue := backlog.NewReader([]backlog.Addr{addr})
	readQueue := func() (backlog.Queue, error) {
		qs, err := queue.Read()
		if err != nil || len(qs) != 1 {
			return backlog.Queue{}, fmt.Errorf("read the application's listen queue: %v", err)
		}
		return qs[0], nil
	}
	for deadline := time.Now().Add(startTimeout); ; time.Sleep(50 * time.Millisecond) {
		q, err := readQueue()
		if err != nil {
			return nil, err
		}
		if q.Queued >= sleepers-appWorkers {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the listen queue holds %d connections after %s, want %d", q.Queued, startTimeout, sleepers-appWorkers)
		}
	}

	progress("probing every %s for %s", probeEvery, o.probe)
	var queued []int64
	var limit uint32
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if q, err := readQueue(); err == nil {
				queued, limit = append(queued, int64(q.Queued)), q.Limit
			}
			select {
			case <-sampling:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	start := time.Now()
	for i, t := range targets {
		// The schedules are offset evenly within the interval.
		offset := probeEvery * time.Duration(i) / time.Duration(len(targets))
		wg.Go(func() { t.probe(ctx, start, offset, o.probe) })
	}
	wg.Wait()
	close(sampling)
	<-sampled
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err := writeCSV(csvPath, targets); err != nil {
		return nil, err
	}

	s := &section{}
	s.p("## Health checks while every worker is busy\n\n")
	s.p("A health route inside the application is answered by the workers that serve user traffic, so it waits\n")
	s.p("behind them when they are busy; notifyd answers from a process of its own.\n\n")
	s.p("![Health-check latency over time while every gunicorn worker is busy](saturation.png)\n\n")
	s.p("gunicorn runs `examples/gunicorn/hello.py` with %d sync workers and `%s`, which installs notifyd's hooks ", appWorkers, seedConfig)
	s.p("and the seed-style health check: each worker writes an empty pid file for it in `post_worker_init`, as the seed did. ")
	s.p("%d clients loop on `/sleep?s=%d`, so every worker sleeps and the rest wait in the listen queue, which held a median of %d ", sleepers, sleepSeconds, median(queued))
	s.p("and at most %d connections (limit %d) while probing. Each endpoint is probed every %s for %s, open loop, ", slices.Max(append(queued, 0)), limit, probeEvery, o.probe)
	s.p("each request on a new connection with %s for the whole exchange, as a load balancer's health check does; ", probeTimeout)
	s.p("latency runs from the dial to the end of the answer. The chart shows every request, a cross at the timeout for a failure, ")
	s.p("drawn by `bench/chart` from the samples `bench/report` writes to `saturation.csv`.\n\n")
	s.p("| target | what answers | requests | 200 | p50 | p99 | max | failed |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	p99 := map[string]time.Duration{}
	failed := map[string]int{}
	for _, t := range targets {
		lat, ok := t.sorted()
		q := func(f float64) string {
			i := max(0, int(float64(len(lat))*f+0.999999)-1)
			if i >= ok {
				return "failed"
			}
			return ms(lat[i])
		}
		if ok == len(lat) && ok > 0 {
			p99[t.name] = lat[max(0, int(float64(len(lat))*0.99+0.999999)-1)]
		}
		failed[t.name] = len(lat) - ok
		s.p("| %s | %s | %d | %d | %s | %s | %s | %d |\n", t.label, t.what, len(lat), ok, q(0.5), q(0.99), q(1), len(lat)-ok)
	}
	s.p("\nQuantiles rank a failed request above every answered one. What separates notifyd from the floor is its health\n")
	s.p("logic; the rest of a latency is the machine: a TCP handshake on loopback and the scheduling of both processes\n")
	s.p("on shared CPUs.\n")
	nd, fl := p99["notifyd"], p99["bare"]
	s.goal(nd > 0 && fl > 0 && float64(nd) <= 1.1*float64(fl) && failed["app"] > 0,
		"saturation: notifyd's p99 ≤ 1.1× the floor's, no failure, while the application's route fails",
		"%s against %s (%.2f×); notifyd %d failed; application %d of %d failed",
		ms(nd), ms(fl), float64(nd)/float64(max(fl, 1)), failed["notifyd"], failed["app"], len(targets[0].samples))
	return s, nil
}

// sorted returns the latencies, answered requests first and in order, and
// how many were answered 200.
func (t *target) sorted() ([]time.Duration, int) {
	var ok, bad []time.Duration
	for _, s := range t.samples {
		if s.outcome == "200" {
			ok = append(ok, s.latency)
		} else {
			bad = append(bad, s.latency)
		}
	}
	slices.Sort(ok)
	return append(ok, bad...), len(ok)
}

// probe sends a request every probeEvery from offset until d after start,
// without waiting for the earlier answers, and records every one.
func (t *target) probe(ctx context.Context, start time.Time, offset, d time.Duration) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	req := []byte("GET / HTTP/1.1\r\nHost: " + t.addr + "\r\nConnection: close\r\n\r\n")
	for at := offset; at < d && ctx.Err() == nil; at += probeEvery {
		time.Sleep(time.Until(start.Add(at)))
		wg.Go(func() {
			begin := time.Now()
			outcome := exchange(t.addr, req, begin.Add(probeTimeout))
			s := sample{at: begin.Sub(start), latency: time.Since(begin), outcome: outcome}
			mu.Lock()
			t.samples = append(t.samples, s)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.SortFunc(t.samples, func(a, b sample) int { return cmp.Compare(a.at, b.at) })
}

// exchange dials addr, sends req and reads the whole answer before deadline,
// and says what became of it.
func exchange(addr string, req []byte, deadline time.Time) string {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err == nil {
		defer c.Close()
		c.SetDeadline(deadline)
		_, err = c.Write(req)
	}
	var resp *http.Response
	if err == nil {
		resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	}
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return "timeout"
	}
	if err != nil {
		return "error"
	}
	return strconv.Itoa(resp.StatusCode)
}

// writeCSV writes every sample as seconds,target,latency_ms,outcome, in the
// order they were sent, for bench/chart.
func writeCSV(path string, targets []*target) error {
	type row struct {
		name string
		s    sample
	}
	var rows []row
	for _, t := range targets {
		for _, s := range t.samples {
			rows = append(rows, row{t.name, s})
		}
	}
	slices.SortStableFunc(rows, func(a, b row) int { return cmp.Compare(a.s.at, b.s.at) })
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "seconds,target,latency_ms,outcome")
	for _, r := range rows {
		fmt.Fprintf(w, "%.4f,%s,%.3f,%s\n", r.s.at.Seconds(), r.name, float64(r.s.latency)/1e6, r.s.outcome)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
