package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/notifyd/notifyd/httpapi"
)

// capConns is wrk's connections in the keep-alive comparison of the
// connection cap section.
const capConns = 16

// holdConns is how many idle keep-alive connections hostile clients hold
// open while the health check is probed.
const holdConns = 5000

// connectionCap measures what the cap on HTTP connections costs and what it
// buys: keep-alive throughput against the plainest net/http server, and
// the health check while 5,000 clients hold idle keep-alive connections.
func connectionCap(ctx context.Context, l *lab, o options) (*section, error) {
	s := &section{}
	s.p("## Connection cap\n\n")
	s.p("notifyd keeps at most %d HTTP connections (`httpapi.MaxConns`) and closes a keep-alive connection idle for\n", httpapi.MaxConns)
	s.p("%s (`httpapi.IdleTimeout`). Once it holds %d, each new connection closes the stalest one that has no request\n", httpapi.IdleTimeout, httpapi.MaxConns)
	s.p("waiting in the kernel, idle keep-alive connections first, so a probe is answered while idle clients fill the cap.\n\n")

	// Keep-alive throughput, paired rounds against the plainest server.
	type contender struct {
		name string
		srv  *server
		runs []float64
	}
	plain, err := l.startBareArgs([]string{"-plain"})
	if err != nil {
		return nil, err
	}
	defer plain.stop()
	nd, err := l.startNotifyd(nil, "--require", "0")
	if err != nil {
		return nil, err
	}
	defer nd.stop()
	contenders := []*contender{{name: "notifyd", srv: nd}}
	if o.baseline != "" {
		bin, err := l.buildAt(ctx, o.baseline)
		if err != nil {
			return nil, err
		}
		before, err := l.startNotifydBinary(bin, nil, "--require", "0")
		if err != nil {
			return nil, err
		}
		defer before.stop()
		contenders = append(contenders, &contender{name: "notifyd at " + o.baseline + " (before the cap)", srv: before})
	}
	floor := &contender{name: "plain net/http (the floor)", srv: plain}
	all := append(contenders, floor)
	for _, c := range all {
		if _, err := wrk(ctx, c.srv.url, capConns, time.Second, false); err != nil {
			return nil, err
		}
	}
	for range o.rounds {
		for _, c := range all {
			r, err := wrk(ctx, c.srv.url, capConns, o.round, false)
			if err != nil {
				return nil, err
			}
			c.runs = append(c.runs, r)
		}
	}
	s.p("### Keep-alive throughput\n\n")
	s.p("`%s`, %d rounds each, rotating, after a warm-up. The floor is `bench/bare -plain`: a zero `http.Server`\n", wrkCommand(capConns, o.round, false), o.rounds)
	s.p("with Go's default runtime settings (GOGC 100), answering a constant body of the same size. Each ratio is the\n")
	s.p("median of the rounds' ratios against the floor's round right after; peak resident memory is `VmHWM` at the end.\n\n")
	s.p("| server | median requests/s | / floor | peak resident |\n| --- | ---: | ---: | ---: |\n")
	ratios := map[string]float64{}
	for _, c := range all {
		peak, err := memory(c.srv.pid(), "VmHWM")
		if err != nil {
			return nil, err
		}
		ratio := paired(c.runs, floor.runs)
		ratios[c.name] = ratio
		s.p("| %s | %.0f | %.3f | %.1f MiB |\n", c.name, median(c.runs), ratio, peak)
	}
	s.p("\nRounds, in requests/s:\n\n")
	for _, c := range all {
		s.p("- %s: %s\n", c.name, rates(c.runs))
	}
	if o.baseline != "" {
		now, before := ratios["notifyd"], ratios[contenders[1].name]
		s.goal(now >= before*0.98, "connection cap: keep-alive throughput / plain net/http ≥ before the cap (within 2%)",
			"%.3f (before: %.3f)", now, before)
	}
	s.p("\n")

	// The health check under the hold.
	held, err := l.startNotifyd(nil)
	if err != nil {
		return nil, err
	}
	defer held.stop()
	ws, err := startWorkers(1)
	if err != nil {
		return nil, err
	}
	defer ws.stop()
	if err := ws.register(held); err != nil {
		return nil, err
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(held.url, "http://"), "/")
	quiet := &target{name: "notifyd, no other client", addr: addr}
	quiet.probe(ctx, time.Now(), 0, o.probe/2)
	h := &holders{addr: addr, stop: make(chan struct{})}
	for range holdConns {
		h.wg.Go(h.hold)
	}
	for deadline := time.Now().Add(startTimeout); h.opened.Load() < holdConns; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			close(h.stop)
			h.wg.Wait()
			return nil, fmt.Errorf("only %d of %d holders connected in %s", h.opened.Load(), holdConns, startTimeout)
		}
	}
	rss, err := memory(held.pid(), "VmRSS")
	if err != nil {
		return nil, err
	}
	loaded := &target{name: fmt.Sprintf("notifyd, %d clients holding keep-alive connections", holdConns), addr: addr}
	heldAtStart := openFDs(held.pid())
	loaded.probe(ctx, time.Now(), 0, o.probe/2)
	heldAtEnd := openFDs(held.pid())
	close(h.stop)
	h.wg.Wait()
	peak, err := memory(held.pid(), "VmHWM")
	if err != nil {
		return nil, err
	}
	s.p("### Health under %d idle keep-alive connections\n\n", holdConns)
	s.p("%d clients each open a keep-alive connection and ask a health check on it at once and every %s, within\n", holdConns, holdEvery)
	s.p("the idle timeout; a connection notifyd closes stays closed. notifyd had %d descriptors open when the probing\n", heldAtStart)
	s.p("began, %d at its end (its connections, and about 10 of its own). Meanwhile the health check is probed every %s\n", heldAtEnd, probeEvery)
	s.p("for %s on a new connection each, %s for the whole exchange, as in the saturation section; first for %s with\n", o.probe/2, probeTimeout, o.probe/2)
	s.p("no other client.\n")
	s.p("notifyd holds 1 registered worker. Resident memory with the cap full: %.1f MiB (`VmRSS` once every client\n", rss)
	s.p("had connected), %.1f MiB at the peak (`VmHWM`).\n\n", peak)
	s.p("| probes | requests | 200 | p50 | p99 | max | failed |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	var p99 time.Duration
	failedUnder := 0
	for _, t := range []*target{quiet, loaded} {
		lat, ok := t.sorted()
		if len(lat) == 0 {
			return nil, fmt.Errorf("%s: no probe", t.name)
		}
		q := func(f float64) time.Duration { return lat[min(len(lat)-1, int(f*float64(len(lat))))] }
		s.p("| %s | %d | %d | %s | %s | %s | %d |\n", t.name, len(lat), ok, ms(q(0.5)), ms(q(0.99)), ms(lat[len(lat)-1]), len(lat)-ok)
		if t == loaded {
			p99, failedUnder = q(0.99), len(lat)-ok
		}
	}
	s.p("\nQuantiles rank a failed request above every answered one.\n")
	s.goal(peak < 64 && failedUnder == 0, fmt.Sprintf("connection cap: %d idle keep-alive connections held: every probe answered, peak resident < 64 MiB", holdConns),
		"%d failed, p99 %s, peak %.1f MiB (%.1f MiB with the cap full)", failedUnder, ms(p99), peak, rss)
	return s, nil
}

// holders are hostile clients that each open one keep-alive connection to
// notifyd and hold it: one health check on it at once, then one every
// holdEvery, so that notifyd's idle timeout never closes it. A connection
// notifyd closes stays closed.
type holders struct {
	addr   string
	stop   chan struct{}
	wg     sync.WaitGroup
	opened atomic.Int64 // clients that have had their first answer, or failed
}

// openFDs is how many descriptors process pid has open, or -1.
func openFDs(pid int) int {
	des, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(des)
}

// holdEvery is how often a holder asks on its connection: within
// httpapi.IdleTimeout.
const holdEvery = httpapi.IdleTimeout / 2

func (h *holders) hold() {
	c, err := net.DialTimeout("tcp", h.addr, 10*time.Second)
	if err != nil {
		h.opened.Add(1)
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	ask := func() error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: notifyd\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(r, nil)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	err = ask()
	h.opened.Add(1)
	if err != nil {
		return
	}
	for {
		select {
		case <-h.stop:
			return
		case <-time.After(holdEvery):
		}
		if ask() != nil {
			return
		}
	}
}
