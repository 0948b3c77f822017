package protocol

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// pageKeeper is a Handler that keeps the pages of the messages it accepts.
type pageKeeper struct {
	mu    sync.Mutex
	pages []*Page
}

func (k *pageKeeper) HandleMessage(m Message, _ Credentials) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if m.Page != nil {
		k.pages = append(k.pages, m.Page)
	}
	return nil
}

func (k *pageKeeper) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.pages {
		p.Close()
	}
	k.pages = nil
}

// memfd returns a memfd of size bytes that starts with the page header,
// with seals added, closed when the test ends.
func memfd(t *testing.T, size int64, seals int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	header := []byte{'N', 'D', 'P', 'G', PageVersion, 0, 0, 0}
	if _, err := unix.Pwrite(fd, header, 0); err != nil {
		t.Fatalf("pwrite: %v", err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatalf("F_ADD_SEALS: %v", err)
		}
	}
	return fd
}

// mappedPages counts the activity pages mapped into this process: memfds
// of the tests' and the writers' names.
func mappedPages(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:hostile") + strings.Count(string(b), "/memfd:notifyd-activity")
}

// TestServerPages passes good and hostile activity pages: each hostile one
// is rejected with its own counted reason, and neither its descriptor nor a
// mapping of it stays with notifyd.
func TestServerPages(t *testing.T) {
	regular, err := os.Create(filepath.Join(t.TempDir(), "page"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	if err := regular.Truncate(PageSize); err != nil {
		t.Fatal(err)
	}
	r, w := pipes(t, 1)
	defer closeAll(w)
	sealed := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	good := memfd(t, PageSize, sealed)
	k := &pageKeeper{}
	srv, path := serve(t, k)
	c := dial(t, path)
	barrier(t, c) // the server's first read, and its watch, are behind it
	badHeader := memfd(t, PageSize, sealed)
	if _, err := unix.Pwrite(badHeader, []byte("XXXX"), 0); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		payload string
		fds     []int
		reason  string
	}{
		{"sealed memfd of one page", "READY=1\nX_NOTIFYD_PAGE=1", []int{good}, "accepted"},
		{"truncatable memfd", "READY=1\nX_NOTIFYD_PAGE=1", []int{memfd(t, PageSize, 0)}, "page_unsealed"},
		{"grow seal only", "READY=1\nX_NOTIFYD_PAGE=1", []int{memfd(t, PageSize, unix.F_SEAL_GROW)}, "page_unsealed"},
		{"too small", "READY=1\nX_NOTIFYD_PAGE=1", []int{memfd(t, 8, sealed)}, "page_size"},
		{"too large", "READY=1\nX_NOTIFYD_PAGE=1", []int{memfd(t, 2*PageSize, sealed)}, "page_size"},
		{"regular file", "READY=1\nX_NOTIFYD_PAGE=1", []int{int(regular.Fd())}, "page_not_memfd"},
		{"pipe", "READY=1\nX_NOTIFYD_PAGE=1", []int{r[0]}, "page_not_memfd"},
		{"wrong magic", "READY=1\nX_NOTIFYD_PAGE=1", []int{badHeader}, "page_header"},
		{"no descriptor", "READY=1\nX_NOTIFYD_PAGE=1", nil, "bad_page"},
		{"two descriptors", "READY=1\nX_NOTIFYD_PAGE=1", []int{good, good}, "bad_page"},
		{"without READY=1", "X_NOTIFYD_PAGE=1", []int{good}, "bad_page"},
		{"bad value", "READY=1\nX_NOTIFYD_PAGE=2", []int{good}, "bad_value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fds, maps, counts := openFDs(t), mappedPages(t), srv.Counts()
			send(t, c, tc.payload, tc.fds...)
			barrier(t, c)
			counts[tc.reason]++
			counts["barrier"]++
			checkCounts(t, srv, counts)
			if got := openFDs(t); got != fds {
				t.Errorf("%d open descriptors after the page, %d before", got, fds)
			}
			wantMaps := maps
			if tc.reason == "accepted" {
				wantMaps++
				if len(k.pages) != 1 {
					t.Fatalf("handler got %d pages, want 1", len(k.pages))
				}
			}
			if got := mappedPages(t); got != wantMaps {
				t.Errorf("%d activity pages mapped, want %d", got, wantMaps)
			}
			k.close()
			if got := mappedPages(t); got != maps {
				t.Errorf("%d activity pages mapped after Close, want %d", got, maps)
			}
		})
	}
}

// TestPageRead writes through a PageWriter and reads through the mapping
// notifyd makes: busy time runs while a request is in flight, a snapshot the
// writer is changing is never shown, and a page that cannot shrink never
// faults.
func TestPageRead(t *testing.T) {
	w, err := NewPageWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p, err := OpenPage(w.FD())
	if err != nil {
		t.Fatalf("OpenPage of a PageWriter's page: %v", err)
	}
	defer p.Close()

	if a, err := p.Read(MonotonicUSec()); err != nil || a != (Activity{}) {
		t.Fatalf("Read of a new page = %+v, %v; want zeros", a, err)
	}
	for range 42 {
		w.Begin()
		w.End()
	}
	w.Begin()
	since := w.load(pageBusySince)
	a, err := p.Read(since + 3_000_000)
	if err != nil {
		t.Fatal(err)
	}
	done := w.load(pageBusyUSec)
	if a.InFlight != 1 || a.Requests != 42 || a.BusyUSec != done+3_000_000 {
		t.Errorf("Read 3 s into a request = %+v, want 1 in flight, 42 requests, %d µs busy", a, done+3_000_000)
	}
	w.End()
	if a, _ := p.Read(MonotonicUSec()); a.InFlight != 0 || a.Requests != 43 || a.BusyUSec != w.load(pageBusyUSec) {
		t.Errorf("Read after the request = %+v, want 0 in flight, 43 requests, %d µs busy", a, w.load(pageBusyUSec))
	}

	// A writer caught in the middle of a change: the sequence stays odd.
	seq := w.load(pageSeq)
	w.store(pageSeq, seq+1)
	w.store(pageRequests, 99)
	if a, err := p.Read(MonotonicUSec()); !errors.Is(err, errPageUnreadable) {
		t.Errorf("Read of a page being changed = %+v, %v; want errPageUnreadable", a, err)
	}
	w.store(pageSeq, seq+2)
	if a, err := p.Read(MonotonicUSec()); err != nil || a.Requests != 99 {
		t.Errorf("Read once the change is done = %+v, %v; want 99 requests", a, err)
	}

	if err := unix.Ftruncate(w.FD(), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("ftruncate of a sealed page = %v, want EPERM", err)
	}
	if _, err := p.Read(MonotonicUSec()); err != nil {
		t.Errorf("Read after a refused truncation: %v", err)
	}
}

// TestPageWriterConcurrent: requests that begin and end on many goroutines
// at once lose no count.
func TestPageWriterConcurrent(t *testing.T) {
	w, err := NewPageWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p, err := OpenPage(w.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				w.Begin()
				// A writer descheduled in the middle of a change makes a
				// read fail; what a read shows must be whole.
				if a, err := p.Read(MonotonicUSec()); err == nil && (a.InFlight > 4 || a.Requests > 4000) {
					t.Errorf("Read during the writes = %+v, torn", a)
				} else if err != nil && !errors.Is(err, errPageUnreadable) {
					t.Errorf("Read during the writes: %v", err)
				}
				w.End()
			}
		})
	}
	wg.Wait()
	if a, err := p.Read(MonotonicUSec()); err != nil || a.InFlight != 0 || a.Requests != 4000 {
		t.Errorf("Read = %+v, %v; want 0 in flight, 4000 requests", a, err)
	}
}
