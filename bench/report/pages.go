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

// activityPages registers o.many workers, each with an activity page, and
// reads them all through /metrics and /status: notifyd's memory and
// descriptors stay within the footprint goal, because it keeps a mapping
// per page, not a descriptor, and gives each page back to the kernel once
// read.
func activityPages(ctx context.Context, l *lab, o options) (*section, error) {
	ws, err := startWorkers(o.many)
	if err != nil {
		return nil, err
	}
	defer ws.stop()
	nd, err := l.startNotifyd(nil)
	if err != nil {
		return nil, err
	}
	defer nd.stop()
	progress("registering %d workers with a page each", o.many)
	if err := registerWithPages(ws, nd); err != nil {
		return nil, err
	}
	rss0, err := memory(nd.pid(), "VmRSS")
	if err != nil {
		return nil, err
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", nd.pid()))
	if err != nil {
		return nil, err
	}
	var metricsTimes, statusTimes []float64
	for range pageScrapes {
		for _, path := range []string{"metrics", "status"} {
			start := time.Now()
			if err := fetch(nd.url + path); err != nil {
				return nil, err
			}
			d := float64(time.Since(start)) / float64(time.Millisecond)
			if path == "metrics" {
				metricsTimes = append(metricsTimes, d)
			} else {
				statusTimes = append(statusTimes, d)
			}
		}
	}
	rss1, err := memory(nd.pid(), "VmRSS")
	if err != nil {
		return nil, err
	}
	hwm, err := memory(nd.pid(), "VmHWM")
	if err != nil {
		return nil, err
	}
	hwm = max(hwm, rss1)

	s := &section{}
	s.p("## Activity pages at scale\n\n")
	s.p("notifyd holds %d registered `sleep` workers, each with an activity page: a sealed 4 KiB memfd, written\n", o.many)
	s.p("once by its writer, passed with `READY=1` and `X_NOTIFYD_PAGE=1`. Then `/metrics` and `/status` are each read\n")
	s.p("%d times, every read reading every page. notifyd keeps each page's mapping and no descriptor, and hands the\n", pageScrapes)
	s.p("page back to the kernel after each read, so that the pages it has read do not stay in its resident set.\n\n")
	s.p("| measure | value |\n| --- | ---: |\n")
	s.p("| resident after registering | %.1f MiB |\n| resident after the reads | %.1f MiB |\n| peak (`VmHWM`) | %.1f MiB |\n", rss0, rss1, hwm)
	s.p("| open descriptors | %d |\n| `/metrics`, median of %d | %.1f ms |\n| `/status`, median of %d | %.1f ms |\n",
		len(fds), pageScrapes, median(metricsTimes), pageScrapes, median(statusTimes))
	s.goal(hwm <= goalPeakMany, fmt.Sprintf("footprint: peak resident ≤ %.0f MiB with %d workers holding activity pages", goalPeakMany, o.many),
		"%.1f MiB; %d descriptors open", hwm, len(fds))
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
