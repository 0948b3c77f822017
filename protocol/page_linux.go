package protocol

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the exact size of a worker's activity page, in bytes: one
// page of memory on every Linux architecture notifyd is built for. The
// layout uses its first 48 bytes.
const PageSize = 4096

// PageMagic and PageVersion open every activity page: the first 64-bit word
// is PageMagic | PageVersion<<32, in the machine's own byte order (notifyd and
// its workers share one machine).
const (
	PageMagic   = 0x4750444e // "NDPG" read as a little-endian uint32
	PageVersion = 1
)

// The page's 64-bit words, by index. See "Activity pages" in the package
// documentation.
const (
	pageHeader    = iota // PageMagic | PageVersion<<32
	pageSeq              // odd while the writer changes the words below
	pageInFlight         // requests in flight now
	pageRequests         // requests finished since the worker booted
	pageBusyUSec         // µs busy, up to the moment in flight last left 0
	pageBusySince        // CLOCK_MONOTONIC µs when in flight last left 0
	pageWords
)

// pageTries bounds how often Read retries a snapshot the writer was changing.
// A writer holds the sequence odd for a few hundred nanoseconds; one that
// keeps it odd is broken or hostile, and its page is not read this time.
const pageTries = 100

// The reasons a page is refused. Each comes with the message whose
// descriptor it was, and rejects that message whole.
var (
	ErrPage         = NewRejection("bad_page", "X_NOTIFYD_PAGE=1 must come with READY=1 and exactly one file descriptor")
	ErrPageNotMemfd = NewRejection("page_not_memfd", "the activity page is not a memfd")
	ErrPageUnsealed = NewRejection("page_unsealed", "the activity page lacks F_SEAL_SHRINK, so it could be truncated under notifyd")
	ErrPageSize     = NewRejection("page_size", "the activity page has the wrong size")
	ErrPageHeader   = NewRejection("page_header", "the activity page does not start with notifyd's magic and version")
	ErrPageMap      = NewRejection("page_map", "the activity page could not be mapped")
)

// errPageUnreadable means a page held the sequence odd, or an impossible
// value, every time Read looked.
var errPageUnreadable = errors.New("read activity page: no consistent snapshot")

// Page is a worker's activity page, mapped read-only. The worker writes its
// activity into it; notifyd reads it only when asked. It is safe for
// concurrent use.
type Page struct {
	mu       sync.Mutex // against Close during a Read
	mem      []byte     // nil once closed
	dev, ino uint64     // the file, to know the same page when it comes again
}

// OpenPage checks that fd is a sealed memfd of PageSize bytes that begins
// with PageMagic and PageVersion, and maps it read-only. It never closes fd;
// the mapping holds the file for as long as the Page is open.
//
// The seal is what keeps notifyd safe: a mapped file that shrinks makes a
// read beyond its new end raise SIGBUS, and F_SEAL_SHRINK is the kernel's
// promise that this file never shrinks. The seals are checked before the
// size, so the size cannot change downwards in between.
func OpenPage(fd int) (*Page, error) {
	// A memfd's name in /proc starts with "/memfd:"; a file on tmpfs would
	// answer F_GET_SEALS too.
	if name, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err != nil || !strings.HasPrefix(name, "/memfd:") {
		return nil, fmt.Errorf("%w: %q", ErrPageNotMemfd, name)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: F_GET_SEALS: %w", ErrPageNotMemfd, err)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("%w (seals %#x)", ErrPageUnsealed, seals)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fstat: %w", ErrPageNotMemfd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%w: not a regular file (mode %#o)", ErrPageNotMemfd, st.Mode)
	}
	if st.Size != PageSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrPageSize, st.Size, PageSize)
	}
	mem, err := unix.Mmap(fd, 0, PageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPageMap, err)
	}
	p := &Page{mem: mem, dev: st.Dev, ino: st.Ino}
	if h := p.word(pageHeader); h != PageMagic|PageVersion<<32 {
		p.Close()
		return nil, fmt.Errorf("%w: %#016x, want %#016x", ErrPageHeader, h, uint64(PageMagic|PageVersion<<32))
	}
	return p, nil
}

// word loads one 64-bit word of the page. The caller holds p.mu or owns p.
func (p *Page) word(i int) uint64 {
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&p.mem[i*8])))
}

// Release takes the page out of notifyd's resident set: the worker's page
// and its content stay, and the next Read faults it in again. A page read
// counts in the reader's resident set like the worker's own memory, 4 KiB a
// worker; releasing costs a system call and a TLB flush, so that a reader
// holding many pages trades time for memory.
func (p *Page) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mem != nil {
		unix.Madvise(p.mem, unix.MADV_DONTNEED) // only an optimisation
	}
}

// Same reports whether p and q map the same file, as a worker that passes
// its page again with each re-announcement does.
func (p *Page) Same(q *Page) bool {
	return p.dev == q.dev && p.ino == q.ino
}

// Read returns the worker's activity as of nowUSec, a CLOCK_MONOTONIC time
// in microseconds (see MonotonicUSec): busy time includes a request still in
// flight, up to now. It returns an error, and no activity, when the page
// holds no consistent snapshot: the writer kept changing it, or it holds a
// value no worker can have.
func (p *Page) Read(nowUSec uint64) (Activity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mem == nil {
		return Activity{}, errPageUnreadable
	}
	for range pageTries {
		// A sequence lock: the writer makes the sequence odd, changes the
		// words, and makes it even again. A snapshot taken between two
		// reads of the same even sequence is one the writer made whole.
		seq := p.word(pageSeq)
		if seq&1 != 0 {
			runtime.Gosched()
			continue
		}
		header := p.word(pageHeader)
		inFlight, requests := p.word(pageInFlight), p.word(pageRequests)
		busy, since := p.word(pageBusyUSec), p.word(pageBusySince)
		if p.word(pageSeq) != seq {
			continue
		}
		if header != PageMagic|PageVersion<<32 || inFlight > math.MaxUint32 {
			return Activity{}, errPageUnreadable
		}
		if inFlight > 0 && nowUSec > since {
			busy += nowUSec - since
		}
		return Activity{InFlight: uint32(inFlight), Requests: requests, BusyUSec: busy}, nil
	}
	return Activity{}, errPageUnreadable
}

// Close unmaps the page. It is idempotent, and safe on a nil Page.
func (p *Page) Close() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mem == nil {
		return nil
	}
	err := unix.Munmap(p.mem)
	p.mem = nil
	return err
}

// MonotonicUSec returns CLOCK_MONOTONIC in microseconds: the clock a page's
// busy-since time is written in.
func MonotonicUSec() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// PageWriter is the worker's side of an activity page: a Go worker's, and
// notifyd's own tests'. It creates the sealed memfd and writes the activity
// into it with no system call. It is safe for concurrent use.
type PageWriter struct {
	mu  sync.Mutex
	fd  int
	mem []byte
}

// NewPageWriter creates a memfd of PageSize bytes, sealed against shrinking
// and growing, maps it and writes its header. Pass FD() with READY=1 and
// X_NOTIFYD_PAGE=1; Close it when the worker is done.
func NewPageWriter() (*PageWriter, error) {
	fd, err := unix.MemfdCreate("notifyd-activity", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("create activity page: %w", err)
	}
	w := &PageWriter{fd: fd}
	if err := unix.Ftruncate(fd, PageSize); err != nil {
		w.Close()
		return nil, fmt.Errorf("size activity page: %w", err)
	}
	if w.mem, err = unix.Mmap(fd, 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		w.Close()
		return nil, fmt.Errorf("map activity page: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		w.Close()
		return nil, fmt.Errorf("seal activity page: %w", err)
	}
	w.store(pageHeader, PageMagic|PageVersion<<32)
	return w, nil
}

// FD is the page's descriptor, to pass to notifyd.
func (w *PageWriter) FD() int { return w.fd }

func (w *PageWriter) store(i int, v uint64) {
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&w.mem[i*8])), v)
}

func (w *PageWriter) load(i int) uint64 {
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&w.mem[i*8])))
}

// change applies f to the page's words under the sequence lock.
func (w *PageWriter) change(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seq := w.load(pageSeq)
	w.store(pageSeq, seq+1)
	f()
	w.store(pageSeq, seq+2)
}

// Begin counts a request that has begun.
func (w *PageWriter) Begin() {
	w.change(func() {
		n := w.load(pageInFlight)
		if n == 0 {
			w.store(pageBusySince, MonotonicUSec())
		}
		w.store(pageInFlight, n+1)
	})
}

// End counts a request that has ended.
func (w *PageWriter) End() {
	w.change(func() {
		n := w.load(pageInFlight) - 1
		if n == 0 {
			w.store(pageBusyUSec, w.load(pageBusyUSec)+MonotonicUSec()-w.load(pageBusySince))
		}
		w.store(pageInFlight, n)
		w.store(pageRequests, w.load(pageRequests)+1)
	})
}

// Close unmaps the page and closes its descriptor. notifyd's mapping, if
// it has one, keeps the page alive for notifyd.
func (w *PageWriter) Close() error {
	if w.mem != nil {
		unix.Munmap(w.mem)
		w.mem = nil
	}
	return unix.Close(w.fd)
}
