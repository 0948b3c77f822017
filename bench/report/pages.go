package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// pageScrapes is how many times /metrics and /status are read, each
// reading every page.
const pageScrapes = 5

// pageRun is what one notifyd of the comparison showed.
type pageRun struct {
	name                  string
	rss0, hwm0, rss1, hwm float64
	fds                   int
	metricsMs, statusMs   []float64
}

// activityPages registers o.many workers with two notifyd instances, with
// an activity page each for one, without for the other (the floor), and
// reads both through /metrics and /status: notifyd keeps a mapping per page,
// not a descriptor, and beyond a few hundred pages gives each back to the
// kernel once read.
func activityPages(ctx context.Context, l *lab, o options) (*section, error) {
	ws, err := startWorkers(o.many)
	if err != nil {
		return nil, err
	}
	defer ws.stop()
	runs := []*pageRun{{name: "notifyd, a page per worker"}, {name: "notifyd, no pages (the floor)"}}
	var servers []*server
	for i := range runs {
		nd, err := l.startNotifyd(nil)
		if err != nil {
			return nil, err
		}
		defer nd.stop()
		servers = append(servers, nd)
		if i == 0 {
			progress("registering %d workers with a page each", o.many)
			err = registerWithPages(ws, nd)
		} else {
			progress("registering %d workers without pages", o.many)
			err = ws.register(nd)
		}
		if err != nil {
			return nil, err
		}
	}
	for i, nd := range servers {
		r := runs[i]
		if r.rss0, err = memory(nd.pid(), "VmRSS"); err != nil {
			return nil, err
		}
		if r.hwm0, err = memory(nd.pid(), "VmHWM"); err != nil {
			return nil, err
		}
		r.hwm0 = max(r.hwm0, r.rss0)
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", nd.pid()))
		if err != nil {
			return nil, err
		}
		r.fds = len(fds)
	}
	for range pageScrapes {
		for i, nd := range servers {
			for _, path := range []string{"metrics", "status"} {
				start := time.Now()
				if err := fetch(nd.url + path); err != nil {
					return nil, err
				}
				d := float64(time.Since(start)) / float64(time.Millisecond)
				if path == "metrics" {
					runs[i].metricsMs = append(runs[i].metricsMs, d)
				} else {
					runs[i].statusMs = append(runs[i].statusMs, d)
				}
			}
		}
	}
	for i, nd := range servers {
		r := runs[i]
		if r.rss1, err = memory(nd.pid(), "VmRSS"); err != nil {
			return nil, err
		}
		if r.hwm, err = memory(nd.pid(), "VmHWM"); err != nil {
			return nil, err
		}
		r.hwm = max(r.hwm, r.rss1)
	}

	s := &section{}
	s.p("## Activity pages at scale\n\n")
	s.p("Two notifyd instances hold the same %d `sleep` workers: one with an activity page per worker (a sealed\n", o.many)
	s.p("4 KiB memfd, written once by its writer, passed with `READY=1` and `X_NOTIFYD_PAGE=1`), one without (the\n")
	s.p("floor). Then `/metrics` and `/status` of each are read %d times, alternating; every read of the first reads\n", pageScrapes)
	s.p("every page. notifyd keeps a page's mapping, not its descriptor (the descriptors are the pidfds, one per\n")
	s.p("worker); beyond 256 pages it gives each page back to the kernel once read, so that the pages do not stay in\n")
	s.p("its resident set.\n\n")
	s.p("| instance | resident after registering | peak through registering | after the reads | peak through the reads | descriptors | `/metrics` (median) | `/status` (median) |\n")
	s.p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range runs {
		s.p("| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %d | %.0f ms | %.0f ms |\n", r.name, r.rss0, r.hwm0, r.rss1, r.hwm, r.fds, median(r.metricsMs), median(r.statusMs))
	}
	s.p("\nReading 10000 workers' state into `/status` and `/metrics` grows the Go heap of both alike; what the pages\n")
	s.p("add is the difference between the rows. Beyond 256 pages each read of a page costs a system call and a TLB\n")
	s.p("flush, which is what makes `/metrics` (it reads every page twice) slower with pages.\n")
	s.goal(runs[0].hwm0 <= goalPeakMany, fmt.Sprintf("footprint: peak resident ≤ %.0f MiB with %d workers holding activity pages", goalPeakMany, o.many),
		"%.1f MiB (without pages %.1f MiB); through 5 reads of /metrics and /status, %.1f MiB (without pages %.1f MiB); %d descriptors, as without pages",
		runs[0].hwm0, runs[1].hwm0, runs[0].hwm, runs[1].hwm, runs[0].fds)
	return s, nil
}

// registerWithPages sends READY=1 with a fresh page for every worker, then
// a barrier, and waits until the health check counts them all. Each page
// is written, so that it is a real page of memory, and its writer's own
// mapping and descriptor closed: notifyd's mapping holds it from then on.
func registerWithPages(ws workers, s *server) error {
	c, err := protocol.Dial(s.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, w := range ws {
		p, err := protocol.NewPageWriter()
		if err != nil {
			return err
		}
		p.Begin()
		p.End()
		err = c.Send([]byte("READY=1\nX_NOTIFYD_PAGE=1\nPID="+strconv.Itoa(w.Process.Pid)), 10*time.Second, p.FD())
		p.Close()
		if err != nil {
			return err
		}
	}
	if err := c.Barrier(time.Minute); err != nil {
		return err
	}
	return awaitAnswer(s.url, fmt.Sprintf("%d workers ready\n", len(ws)))
}

// fetch reads url whole and wants 200.
func fetch(url string) error {
	c := http.Client{Timeout: time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
