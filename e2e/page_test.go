package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// pagesMapped counts the workers' activity pages mapped into pid.
func pagesMapped(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:notifyd-activity")
}

// workerBusy returns the busy seconds and the requests in flight of the one
// worker /status shows.
func workerBusy(t *testing.T, d *daemon) (busy float64, inFlight int) {
	t.Helper()
	doc := statusActivity(t, d)
	if len(doc.Workers) != 1 {
		t.Fatalf("/status shows %d workers, want 1", len(doc.Workers))
	}
	return doc.Workers[0].BusySeconds, doc.Workers[0].InFlight
}

// TestActivityPageLongRequest: with the page, busy time rises while a 3 s
// request is still in flight, and the request sends notifyd nothing.
func TestActivityPageLongRequest(t *testing.T) {
	t.Setenv("NOTIFYD_REANNOUNCE", "3600") // no datagram but the first READY=1
	d := startNotifyd(t, shortDir(t), "--require", "1")
	s := startGunicorn(t, d.socket, "--workers", "1")
	waitWorkers(t, d, s, 1)
	if n := pagesMapped(t, d.cmd.Process.Pid); n != 1 {
		t.Fatalf("notifyd maps %d activity pages, want 1", n)
	}
	received := func() float64 {
		var n float64
		for k, v := range metrics(t, d) {
			if strings.HasPrefix(k, "notifyd_messages_total{") {
				n += v
			}
		}
		return n
	}
	before := received()

	slow := inBackground(t, s, "/sleep?s=3", 1)
	var first float64
	waitFor(t, "the request in flight", func() bool {
		var n int
		first, n = workerBusy(t, d)
		return n == 1
	})
	waitFor(t, "busy time to rise by a second in the request", func() bool {
		busy, n := workerBusy(t, d)
		if n != 1 {
			t.Fatalf("the request ended before busy time rose by a second: %v s, was %v s", busy, first)
		}
		return busy >= first+1
	})
	slow()
	waitFor(t, "the request to end", func() bool {
		busy, n := workerBusy(t, d)
		return n == 0 && busy >= 3
	})
	if got := received() - before; got != 0 {
		t.Fatalf("notifyd received %v datagrams for the request, want none", got)
	}
}

// TestActivityPageWorkerClasses: every worker class passes its page with
// READY=1, counts exactly, and passes it again to a restarted notifyd.
func TestActivityPageWorkerClasses(t *testing.T) {
	python := gunicornPython(t)
	for _, class := range []string{"sync", "gthread", "gevent", "eventlet"} {
		t.Run(class, func(t *testing.T) {
			needWorkerClass(t, python, class)
			t.Setenv("NOTIFYD_REANNOUNCE", "1")
			dir := shortDir(t)
			d := startNotifyd(t, dir, "--require", "2")
			s := startGunicorn(t, d.socket, "--worker-class", class)
			before := waitWorkers(t, d, s, 2)
			if n := pagesMapped(t, d.cmd.Process.Pid); n != 2 {
				t.Fatalf("notifyd maps %d activity pages, want 2", n)
			}
			served := func(n int) {
				t.Helper()
				base := activityCounters(t, d).requests
				getAll(t, s, "/", n, 2)
				want := base + float64(n)
				var now float64
				waitFor(t, fmt.Sprintf("notifyd_requests_total %v", want), func() bool {
					now = activityCounters(t, d).requests
					return now >= want
				})
				if now != want {
					t.Fatalf("notifyd_requests_total rose by %v, want exactly %d", now-base, n)
				}
			}
			served(42)

			killNotifyd(t, d)
			for _, pid := range before {
				os.Remove(filepath.Join(dir, ".gunicorn.worker."+strconv.Itoa(pid)))
			}
			d = startNotifyd(t, dir, "--require", "2")
			if after := waitRecovered(t, d, s, 2); !slices.Equal(after, before) {
				t.Fatalf("workers %v after the restart, want the same %v", after, before)
			}
			if n := pagesMapped(t, d.cmd.Process.Pid); n != 2 {
				t.Fatalf("restarted notifyd maps %d activity pages, want 2", n)
			}
			served(10)
			m := metrics(t, d)
			if n := m[`notifyd_messages_total{result="page_twice"}`]; n != 0 {
				t.Fatalf("%v pages refused as a second page: re-announcements pass the same page", n)
			}
			if n := m["notifyd_activity_backwards_total"]; n != 0 {
				t.Fatalf("notifyd_activity_backwards_total %v, want 0", n)
			}
		})
	}
}

// TestRaisesSoftNoFileLimit: notifyd holds a pidfd per worker, so it raises
// its soft RLIMIT_NOFILE to the hard limit, as a Go program does at start
// (to one below it, which the runtime uses to tell its own raise from an
// operator's prlimit). An activity page costs it no descriptor: it keeps
// the mapping only.
func TestRaisesSoftNoFileLimit(t *testing.T) {
	prlimit := need(t, "prlimit")
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Max <= 64 {
		t.Fatalf("hard RLIMIT_NOFILE %d leaves nothing to raise", rl.Max)
	}
	dir := shortDir(t)
	d := launch(t, dir, nil, []string{prlimit, fmt.Sprintf("--nofile=64:%d", rl.Max), "--"})
	d.waitStarted(t)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("Max open files %d %d files", rl.Max-1, rl.Max)
	var got string
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "Max open files") {
			got = strings.Join(strings.Fields(line), " ")
		}
	}
	if got != want {
		t.Fatalf("notifyd's limit %q, want %q", got, want)
	}
}
