package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
)

// The queue-time run: wrk ramps the connections to a gunicorn of appWorkers
// sync workers up past what they serve and back down, while a client of
// this program measures its own wait and notifyd's /status is read.
const (
	serviceSeconds = 0.05 // each request sleeps this long in a worker
	queueEvery     = 100 * time.Millisecond
	queueTimeout   = 30 * time.Second
)

// rampConns are wrk's connections, phase after phase: the two workers
// serve 40 requests a second, so every connection beyond two waits.
var rampConns = []int{2, 8, 20, 40, 60, 40, 20, 8, 2}

// waitSample is one request of the measuring client: sent at, answered at,
// and its wait before service, its latency less the service time.
type waitSample struct {
	sent, done time.Duration
	wait       float64 // seconds
	ok         bool
}

// ageSample is one read of notifyd's /status.
type ageSample struct {
	at     time.Duration
	oldest float64
	queued uint32
}

func queueTime(ctx context.Context, l *lab, o options, csvPath string) (*section, error) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := free.Addr().String()
	free.Close()
	a, err := startApp(l, appWorkers, addr, "--listen-queue", addr)
	if err != nil {
		return nil, err
	}
	defer func() { a.stop(); a.notifyd.stop() }()
	url := fmt.Sprintf("http://%s/sleep?s=%g", addr, serviceSeconds)
	phase := 4 * time.Second
	if o.quick {
		phase = time.Second
	}

	// The ramp, with the client and the reader running throughout.
	progress("ramping wrk through %v connections, %s each", rampConns, phase)
	start := time.Now()
	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var waits []waitSample
	var ages []ageSample
	wg.Go(func() { waits = measureWaits(runCtx, start, addr) })
	wg.Go(func() { ages = readAges(runCtx, start, a.notifyd.url+"status") })
	for _, c := range rampConns {
		runWrk(ctx, url, c, phase)
	}
	time.Sleep(2 * time.Second) // the tail: the last waits end
	stopRun()
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err := writeQueueCSV(csvPath, waits, ages); err != nil {
		return nil, err
	}

	// notifyd's reading against each client request's own wait: the last
	// reading taken while the request waited, against the request's age at
	// that moment. Connections are accepted in the order they came, so by
	// then the request is the oldest waiting, or one a few ms older is.
	var diffs, absDiffs []float64
	for _, w := range waits {
		if !w.ok || w.wait < 0.1 {
			continue
		}
		i := slices.IndexFunc(ages, func(s ageSample) bool { return s.at > w.done })
		if i < 0 {
			i = len(ages)
		}
		if i == 0 || ages[i-1].at < w.sent {
			continue
		}
		last := ages[i-1]
		d := last.oldest - (last.at - w.sent).Seconds()
		diffs = append(diffs, d)
		absDiffs = append(absDiffs, math.Abs(d))
	}
	if len(diffs) == 0 {
		return nil, fmt.Errorf("no request of the measuring client waited 100 ms or more")
	}
	maxWait := 0.0
	for _, w := range waits {
		maxWait = max(maxWait, w.wait)
	}

	// CPU: notifyd saturated, with nobody reading its endpoints, then idle.
	window := 10 * time.Second
	if o.quick {
		window = 2 * time.Second
	}
	progress("notifyd's CPU for %s saturated, then %s idle", window, window)
	satCPU, nonEmpty, err := cpuDuring(ctx, a.notifyd.pid(), addr, window, func(d time.Duration) { runWrk(ctx, url, 40, d) })
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Second) // the queue drains, the workers go idle
	idleCPU, _, err := cpuDuring(ctx, a.notifyd.pid(), addr, window, func(d time.Duration) { sleepCtx(ctx, d) })
	if err != nil {
		return nil, err
	}

	s := &section{}
	s.p("## Queue time: how long requests wait for a worker\n\n")
	s.p("![notifyd's reported oldest wait against the clients' own measured wait, while wrk ramps a gunicorn past saturation and back](queue-time.png)\n\n")
	s.p("gunicorn runs `examples/gunicorn/hello.py` with %d sync workers and `%s`; notifyd watches its listen queue ", appWorkers, seedConfig)
	s.p("(`--listen-queue`). wrk loads `/sleep?s=%g` (%g s of service a request, so the workers serve %d a second) ", serviceSeconds, serviceSeconds, int(float64(appWorkers)/serviceSeconds))
	s.p("with %v connections, %s each, one after the other; gunicorn's sync workers close every connection, so each request ", rampConns, phase)
	s.p("queues anew. Beside wrk, a client sends the same request every %s on a new connection and takes its own wait before ", queueEvery)
	s.p("service to be its latency less the %g s of service; notifyd's `/status` is read every %s. ", serviceSeconds, queueEvery)
	s.p("The chart (`bench/chart -queue-time`, from `queue-time.csv`) puts notifyd's `oldest_seconds` and each client request's ")
	s.p("wait, at the moment it ended, on one time axis.\n\n")
	s.p("For each of the %d client requests that waited 100 ms or more (the longest waited %.2f s), the last `oldest_seconds` ", len(diffs), maxWait)
	s.p("read while it waited is set against the request's own age when that reading arrived; connections are accepted in ")
	s.p("the order they came, so by then the request is the oldest waiting, or nearly. notifyd minus the client: median %+.0f ms, ", median(diffs)*1000)
	s.p("median of the absolute difference %.0f ms, worst %.0f ms. `/status` may answer from a read up to 100 ms old, which makes ", median(absDiffs)*1000, slices.Max(absDiffs)*1000)
	s.p("notifyd's figure the lower; the kernel counts from the request's arrival, the client from before its handshake.\n\n")
	s.p("| notifyd's CPU | per second of wall time |\n| --- | ---: |\n")
	s.p("| saturated: wrk with 40 connections for %s, the queue non-empty in %.0f%% of this program's reads; nobody reads notifyd | %s |\n", window, nonEmpty*100, ms(satCPU))
	s.p("| idle: no request for %s | %s |\n\n", window, ms(idleCPU))
	s.p("While saturated notifyd samples the queue every %s (`backlog.SampleInterval`: the listeners only, for the peak) and ", backlog.SampleInterval)
	s.p("takes the workers' activity datagrams, two a request; idle, it is not woken at all. The age of TCP connections is ")
	s.p("read only when asked for (`/status`, `/metrics`, the agent): that dump walks every TCP socket of the host, ")
	s.p("%d here when this ran.\n", tcpSockets())
	s.goal(median(absDiffs) <= 0.15,
		"queue time: notifyd's oldest age within 150 ms of the clients' own wait (median)",
		"median %.0f ms, worst %.0f ms over %d requests", median(absDiffs)*1000, slices.Max(absDiffs)*1000, len(diffs))
	s.goal(idleCPU <= window/1000,
		"queue time: an idle notifyd watching a queue uses ≤ 1 ms of CPU a second",
		"%s a second idle; %s a second saturated", ms(idleCPU), ms(satCPU))
	return s, nil
}

// cpuDuring returns notifyd's CPU time per second of wall time while load
// runs for d, and the share of this program's own reads of the listen
// queue, every 250 ms, that found it non-empty.
func cpuDuring(ctx context.Context, pid int, addr string, d time.Duration, load func(time.Duration)) (time.Duration, float64, error) {
	a, err := backlog.ParseAddr(addr)
	if err != nil {
		return 0, 0, err
	}
	queue := backlog.NewReader([]backlog.Addr{a})
	done := make(chan struct{})
	var reads, nonEmpty int
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(250 * time.Millisecond):
			}
			if qs, err := queue.Read(); err == nil {
				reads++
				if qs[0].Queued > 0 {
					nonEmpty++
				}
			}
		}
	})
	cpu0, err := cpuTime(pid)
	if err != nil {
		close(done)
		wg.Wait()
		return 0, 0, err
	}
	began := time.Now()
	load(d)
	cpu1, err := cpuTime(pid)
	wall := time.Since(began)
	close(done)
	wg.Wait()
	if err != nil {
		return 0, 0, err
	}
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	return (cpu1 - cpu0) * time.Second / wall, float64(nonEmpty) / float64(max(reads, 1)), nil
}

// tcpSockets counts the host's TCP sockets, every state, from
// /proc/net/tcp and tcp6: what a dump of TCP connections walks.
func tcpSockets() int {
	n := 0
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if b, err := os.ReadFile(name); err == nil {
			n += max(0, strings.Count(string(b), "\n")-1)
		}
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// runWrk loads url with conns connections for d. Its errors are the
// timeouts of a saturated server, which is the point: they are not checked.
func runWrk(ctx context.Context, url string, conns int, d time.Duration) {
	exec.CommandContext(ctx, "wrk", "-t1", "-c"+strconv.Itoa(conns), "-d"+d.String(),
		"--timeout", queueTimeout.String(), url).Run()
}

// measureWaits sends a request every queueEvery until ctx ends, each on a
// new connection, without waiting for the earlier ones, and returns every
// one's wait.
func measureWaits(ctx context.Context, start time.Time, addr string) []waitSample {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var out []waitSample
	req := []byte(fmt.Sprintf("GET /sleep?s=%g HTTP/1.0\r\nHost: %s\r\n\r\n", serviceSeconds, addr))
	for at := time.Duration(0); ctx.Err() == nil; at += queueEvery {
		time.Sleep(time.Until(start.Add(at)))
		wg.Go(func() {
			begin := time.Now()
			outcome := exchange(addr, req, begin.Add(queueTimeout))
			end := time.Now()
			mu.Lock()
			out = append(out, waitSample{sent: begin.Sub(start), done: end.Sub(start),
				wait: max(0, end.Sub(begin).Seconds()-serviceSeconds), ok: outcome == "200"})
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b waitSample) int { return int(a.sent - b.sent) })
	return out
}

// readAges reads notifyd's /status every queueEvery until ctx ends.
func readAges(ctx context.Context, start time.Time, url string) []ageSample {
	c := http.Client{Timeout: 5 * time.Second}
	var out []ageSample
	for at := time.Duration(0); ctx.Err() == nil; at += queueEvery {
		time.Sleep(time.Until(start.Add(at)))
		resp, err := c.Get(url)
		if err != nil {
			continue
		}
		var doc httpapi.Status
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err == nil && len(doc.ListenQueues) == 1 {
			q := doc.ListenQueues[0]
			out = append(out, ageSample{at: time.Since(start), oldest: q.OldestSeconds, queued: q.Queued})
		}
	}
	return out
}

// writeQueueCSV writes seconds,series,wait_s for bench/chart -queue-time:
// notifyd's readings, and each client request's wait at its end.
func writeQueueCSV(path string, waits []waitSample, ages []ageSample) error {
	var b strings.Builder
	b.WriteString("seconds,series,wait_s\n")
	for _, s := range ages {
		fmt.Fprintf(&b, "%.4f,notifyd,%.4f\n", s.at.Seconds(), s.oldest)
	}
	for _, w := range waits {
		if w.ok {
			fmt.Fprintf(&b, "%.4f,client,%.4f\n", w.done.Seconds(), w.wait)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	w.WriteString(b.String())
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
