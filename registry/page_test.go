//go:build linux

package registry

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/protocol"
)

// pageWriter is a worker's page, closed when the test ends.
func pageWriter(tb testing.TB) *protocol.PageWriter {
	tb.Helper()
	w, err := protocol.NewPageWriter()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { w.Close() })
	return w
}

// withPage is READY=1 for pid with w's page, mapped as the socket maps it.
func withPage(tb testing.TB, pid int, w *protocol.PageWriter) protocol.Message {
	tb.Helper()
	p, err := protocol.OpenPage(w.FD())
	if err != nil {
		tb.Fatalf("OpenPage: %v", err)
	}
	m := ready(pid)
	m.HasPage, m.Page = true, p
	return m
}

// mappedPages counts the activity pages mapped into this process, the
// writers' own mappings included.
func mappedPages(tb testing.TB) int {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		tb.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:notifyd-activity")
}

// TestPageActivity: a worker with a page reports through it alone, read
// when asked, busy time included while a request is in flight; its page is
// kept once, whatever number of times it comes again, and closed when the
// worker leaves.
func TestPageActivity(t *testing.T) {
	r := startRegistry(t, testConfig(t))
	worker := startSleep(t)
	w := pageWriter(t)
	for range 3 {
		w.Begin()
		w.End()
	}
	base := mappedPages(t) // the writer's own
	send(t, r, withPage(t, worker.pid(), w), rootCreds())
	if got := mappedPages(t); got != base+1 {
		t.Fatalf("%d pages mapped after READY=1 with a page, want %d", got, base+1)
	}
	// What the worker did before it was ready is where its counting starts.
	wantTotals(t, r, Totals{})

	for range 42 {
		w.Begin()
		w.End()
	}
	wantTotals(t, r, Totals{Requests: 42, BusyUSec: r.Activity().BusyUSec})
	w.Begin()
	first := r.Activity()
	if first.InFlight != 1 || first.BusyWorkers != 1 {
		t.Fatalf("Activity() in a request = %+v, want 1 in flight, 1 busy worker", first)
	}
	eventually(t, "busy time to grow during the request", func() bool {
		return r.Activity().BusyUSec > first.BusyUSec
	})

	// The page again, as a re-announcement brings it: nothing changes.
	send(t, r, withPage(t, worker.pid(), w), rootCreds())
	if got := mappedPages(t); got != base+1 {
		t.Errorf("%d pages mapped after the same page again, want %d", got, base+1)
	}
	// Another page for the same worker is refused whole, and not kept.
	other := pageWriter(t)
	base++
	err := r.HandleMessage(withPage(t, worker.pid(), other), rootCreds())
	if !errors.Is(err, ErrPageTwice) || protocol.ReasonOf(err) != "page_twice" {
		t.Errorf("a second page = %v, want ErrPageTwice", err)
	}
	if got := mappedPages(t); got != base+1 {
		t.Errorf("%d pages mapped after a second page, want %d", got, base+1)
	}
	// Datagram activity from a worker with a page is not its truth.
	send(t, r, activity(worker.pid(), 7, 1_000, 1), rootCreds())
	if a := r.Activity(); a.InFlight != 1 || a.Requests != 42 {
		t.Errorf("Activity() after a datagram report = %+v, want the page's 1 in flight, 42 requests", a)
	}

	w.End()
	worker.killAndReap(t)
	eventually(t, "the worker to leave", func() bool { return r.Summary().Workers == 0 })
	if got := mappedPages(t); got != base {
		t.Errorf("%d pages mapped after the worker left, want %d", got, base)
	}
	if a := r.Activity(); a.InFlight != 0 || a.Requests != 43 {
		t.Errorf("Activity() after the worker left = %+v, want 0 in flight, 43 requests", a)
	}
}

// TestPageRejectedWithTheMessage: a page whose message is rejected is
// closed with it.
func TestPageRejectedWithTheMessage(t *testing.T) {
	r := startRegistry(t, testConfig(t))
	worker := startSleep(t)
	w := pageWriter(t)
	base := mappedPages(t)
	gone := worker.pid()
	worker.killAndReap(t)
	err := r.HandleMessage(withPage(t, gone, w), rootCreds())
	if !errors.Is(err, ErrNoProcess) {
		t.Errorf("READY=1 with a page for a dead pid = %v, want ErrNoProcess", err)
	}
	if got := mappedPages(t); got != base {
		t.Errorf("%d pages mapped after the rejection, want %d", got, base)
	}
}
