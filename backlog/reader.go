//go:build linux

package backlog

import (
	"cmp"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Queue is what the kernel says of one address.
type Queue struct {
	Addr      string `json:"addr"`
	Listening bool   `json:"listening"` // false: nothing listens there (not an error)
	Queued    uint32 `json:"queued"`    // connections waiting for accept()
	// Limit is the backlog the listener asked for, as the kernel capped it
	// (at net.core.somaxconn). It is 0 when the kernel refused sock_diag and
	// the queue came from /proc/net/tcp, which does not show it.
	Limit uint32 `json:"limit"`
	// OldestSeconds is how long the oldest connection waiting has waited; 0
	// when none waits. TCP: the kernel's time since that connection last
	// received data, which for a connection that has sent its request is
	// the time since the request arrived, to the kernel's clock tick
	// (4 ms at most). Unix: the kernel keeps no time, so the age counts
	// from the first read that saw the connection waiting (see Sampler).
	OldestSeconds float64 `json:"oldest_seconds"`
	// Peak is the longest queue any read saw in the last PeakWindow: the
	// reads of the Sampler while every worker is busy, and every other.
	Peak uint32 `json:"peak"`
	// Drops counts the connections the kernel dropped because the queue
	// was full: the TCP listener's drop counter (SK_MEMINFO_DROPS), which
	// counts each SYN or handshake it refused, so a client that retries
	// counts once per try. A Unix socket drops nothing: a client blocks in
	// connect(2) until there is room, or fails at once with EAGAIN when
	// non-blocking, and the kernel counts neither. Always 0 for Unix
	// addresses, and where the queue came from /proc.
	Drops uint64 `json:"drops"`
}

// CountsDrops reports whether Drops means anything for q's address: a TCP
// listener drops, a Unix one makes clients wait.
func (q Queue) CountsDrops() bool { return !strings.HasPrefix(q.Addr, unixPrefix) }

// PeakWindow is how far back Queue.Peak looks: four scrapes at Prometheus's
// usual 15 s interval, so that a burst between two scrapes shows in both.
const PeakWindow = 60 * time.Second

// tcpListener is one TCP socket in the LISTEN state.
type tcpListener struct {
	ip            netip.Addr // 4 bytes for AF_INET, 16 for AF_INET6 (v4-mapped too)
	port          uint16
	v6only        bool // IPV6_V6ONLY: an IPv6 wildcard listener that takes no IPv4
	queued, limit uint32
	drops         uint32 // sk_drops; 0 from /proc
}

// unixListener is one Unix socket in the LISTEN state bound to a path.
type unixListener struct {
	path           string // as the listener passed it to bind(2)
	ino            uint32 // the socket's own inode, in sockfs
	vfsIno, vfsDev uint32 // the socket file; vfsDev in the kernel's MKDEV form
	queued, limit  uint32
	waiting        []uint32 // inodes of the connections waiting for accept()
}

// Reader reads the accept queues of a fixed set of addresses, and remembers
// what it needs across reads: the peak of each queue over PeakWindow, and
// when it first saw each Unix connection waiting.
type Reader struct {
	addrs []Addr
	start time.Time // the origin of the peak window's seconds

	// readMu orders reads, so that each one's memory builds on the last.
	readMu sync.Mutex
	seen   []map[uint32]time.Duration // per address: Unix inode -> first seen, since start
	peaks  []peakWindow

	mu       sync.Mutex
	last     []Queue   // the last successful read, or nil
	lastAt   time.Time // when it started
	inflight *cachedRead
}

// peakWindow holds the longest queue of each second of the last
// PeakWindow, in a ring indexed by the second.
type peakWindow [PeakWindow / time.Second]struct {
	second int64
	max    uint32
}

// note records n at second sec and returns the longest queue of the window
// that ends then.
func (p *peakWindow) note(sec int64, n uint32) uint32 {
	b := &p[sec%int64(len(p))]
	if b.second != sec {
		b.second, b.max = sec, 0
	}
	b.max = max(b.max, n)
	var peak uint32
	for _, b := range p {
		if b.second > sec-int64(len(p)) {
			peak = max(peak, b.max)
		}
	}
	return peak
}

// cachedRead is a read that Cached callers wait for together.
type cachedRead struct {
	done chan struct{}
	qs   []Queue
	err  error
}

// NewReader returns a Reader for addrs. It does no I/O.
func NewReader(addrs []Addr) *Reader {
	r := &Reader{addrs: slices.Clone(addrs), start: time.Now(),
		seen: make([]map[uint32]time.Duration, len(addrs)), peaks: make([]peakWindow, len(addrs))}
	for i := range r.peaks {
		// Second 0 is a real second of the window: mark every bucket as
		// older than the window.
		for j := range r.peaks[i] {
			r.peaks[i][j].second = -int64(len(r.peaks[i]))
		}
	}
	return r
}

// Read asks the kernel now, through sock_diag(7): one dump of the IPv4 TCP
// listeners when an IPv4 address is watched, one of the IPv6 listeners when
// an IPv6 address is watched or an IPv4 one found no IPv4 listener (a
// dual-stack [::] socket takes IPv4 connections too), and one of the Unix
// listeners when a Unix path is watched. The kernel skips TCP connections
// altogether when asked for listeners only, so the cost of a TCP read does
// not grow with the traffic.
//
// The results are in the order of the addresses given. For a TCP address,
// the listener is the one that would accept a connection to it: one bound
// to exactly that address, else the wildcard of the same port (0.0.0.0, then
// a [::] that is not IPV6_V6ONLY, for IPv4; [::] for IPv6). A wildcard
// address, 0.0.0.0 or [::], matches only a wildcard listener. Several
// sockets of one SO_REUSEPORT group share the connections, so their queues
// and limits are added together. A Unix address matches the listener bound
// to that path; when an old listener still holds the name of a file that
// was replaced, the one whose file is there now counts.
//
// When a TCP queue holds connections, Read also dumps the connections to
// that port, filtered in the kernel by port and state, to find the oldest;
// an empty queue costs nothing more.
//
// Read returns an error only when the kernel could not be asked; an
// address that nobody listens on has Listening false. Where sock_diag is
// refused (seccomp, an LSM, a kernel without it), TCP queues are read from
// /proc/net/tcp and /proc/net/tcp6 instead, with Limit 0; Unix queues have
// no such fallback, and Read fails.
func (r *Reader) Read() ([]Queue, error) { return r.read(true) }

// read is Read; without tcpAges it leaves OldestSeconds 0 for TCP addresses
// and skips the dump of their connections. That dump walks every TCP
// socket of the namespace, time-wait ones included, which on a busy host
// costs milliseconds: the Sampler, which needs only lengths and the Unix
// connections, reads ten times a second and leaves it out.
func (r *Reader) read(tcpAges bool) ([]Queue, error) {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	s := &session{noAges: !tcpAges}
	defer s.close()
	qs := make([]Queue, len(r.addrs))
	icons := make([][]uint32, len(r.addrs))
	for i, a := range r.addrs {
		q, waiting, err := s.queue(a)
		if err != nil {
			return nil, err
		}
		qs[i], icons[i] = q, waiting
	}
	now := time.Since(r.start)
	for i := range qs {
		if r.addrs[i].network == "unix" {
			qs[i].OldestSeconds = r.unixAge(i, icons[i], now)
		}
		qs[i].Peak = r.peaks[i].note(int64(now/time.Second), qs[i].Queued)
	}
	return qs, nil
}

// unixAge returns how long the oldest of the Unix connections waiting on
// address i has been seen waiting, and forgets the ones no longer there.
// The caller holds readMu.
func (r *Reader) unixAge(i int, waiting []uint32, now time.Duration) float64 {
	was := r.seen[i]
	seen := make(map[uint32]time.Duration, len(waiting))
	oldest := now
	for _, ino := range waiting {
		first, ok := was[ino]
		if !ok {
			first = now
		}
		seen[ino] = first
		oldest = min(oldest, first)
	}
	r.seen[i] = seen
	return (now - oldest).Seconds()
}

// Cached returns the last Read if it is younger than maxAge, else reads
// anew. It is safe for concurrent use: callers that arrive during a read
// wait for it and share its result, so a burst of requests costs one read.
// A failed read is not kept; the next call reads again. Each caller gets
// its own copy of the slice.
func (r *Reader) Cached(maxAge time.Duration) ([]Queue, error) {
	r.mu.Lock()
	if r.last != nil && time.Since(r.lastAt) < maxAge {
		qs := slices.Clone(r.last)
		r.mu.Unlock()
		return qs, nil
	}
	if c := r.inflight; c != nil {
		r.mu.Unlock()
		<-c.done
		return slices.Clone(c.qs), c.err
	}
	c := &cachedRead{done: make(chan struct{})}
	r.inflight = c
	r.mu.Unlock()

	start := time.Now()
	c.qs, c.err = r.Read()

	r.mu.Lock()
	r.inflight = nil
	if c.err == nil {
		r.last, r.lastAt = c.qs, start
	}
	r.mu.Unlock()
	close(c.done)
	return slices.Clone(c.qs), c.err
}

// session is what one Read has asked the kernel so far: each dump is done
// at most once, and only when an address needs it.
type session struct {
	conn    *diagConn
	connErr error // why the sock_diag socket could not be opened
	tcp     map[int][]tcpListener
	viaProc map[int]bool // the families whose listeners came from /proc
	noAges  bool         // leave TCP ages out
	unix    []unixListener
	unixOK  bool
}

func (s *session) close() {
	if s.conn != nil {
		s.conn.Close()
	}
}

// diag returns the session's sock_diag socket, opening it on first use.
func (s *session) diag() (*diagConn, error) {
	if s.conn == nil && s.connErr == nil {
		s.conn, s.connErr = openDiag()
	}
	return s.conn, s.connErr
}

// tcpListeners returns the TCP listeners of family, from sock_diag or, where
// that is refused, from /proc.
func (s *session) tcpListeners(family int) ([]tcpListener, error) {
	if ls, ok := s.tcp[family]; ok {
		return ls, nil
	}
	c, err := s.diag()
	var ls []tcpListener
	if err == nil {
		ls, err = c.dumpTCP(family)
	}
	if refused(err) {
		ls, err = procListeners(family)
		if s.viaProc == nil {
			s.viaProc = make(map[int]bool, 2)
		}
		s.viaProc[family] = true
	}
	if err != nil {
		return nil, fmt.Errorf("read %s listeners: %w", familyName(family), err)
	}
	if s.tcp == nil {
		s.tcp = make(map[int][]tcpListener, 2)
	}
	s.tcp[family] = ls
	return ls, nil
}

func familyName(family int) string {
	if family == unix.AF_INET6 {
		return "tcp6"
	}
	return "tcp"
}

// unixListeners returns the Unix listeners bound to a path.
func (s *session) unixListeners() ([]unixListener, error) {
	if s.unixOK {
		return s.unix, nil
	}
	c, err := s.diag()
	if err == nil {
		s.unix, err = c.dumpUnix()
	}
	if err != nil {
		if refused(err) {
			return nil, fmt.Errorf("read unix listeners: sock_diag refused, and /proc shows no queue for unix sockets: %w", err)
		}
		return nil, fmt.Errorf("read unix listeners: %w", err)
	}
	s.unixOK = true
	return s.unix, nil
}

// queue reads the queue of a. For a Unix address it also returns the inodes
// of the connections waiting, whose age only the Reader can tell.
func (s *session) queue(a Addr) (Queue, []uint32, error) {
	q := Queue{Addr: a.String()}
	switch a.network {
	case "tcp":
		err := s.tcpQueue(&q, a.ip.Unmap(), a.port)
		return q, nil, err
	case "unix":
		l, err := s.unixQueue(a.path)
		if err != nil || l == nil {
			return q, nil, err
		}
		q.Listening, q.Queued, q.Limit = true, l.queued, l.limit
		return q, l.waiting, nil
	}
	return q, nil, nil
}

// tcpQueue finds the listeners that take connections to ip:port, in the
// order the kernel's listener lookup (__inet_lookup_listener) prefers them:
// the exact address, then the wildcard, and IPv4 sockets before IPv6 ones.
// One case is simplified so that the common one costs a single dump: an
// IPv6 socket bound to a v4-mapped address (::ffff:127.0.0.1) is looked at
// after the IPv4 wildcard, where the kernel would put it before. Both can
// listen at once only in one SO_REUSEPORT group.
//
// It fills in q's listening, queue, limit and drops, and, when connections
// wait, the age of the oldest of those the listeners found would accept.
func (s *session) tcpQueue(q *Queue, ip netip.Addr, port uint16) error {
	type tier struct {
		family   int
		ip       netip.Addr
		dualOnly bool // only listeners that are not IPV6_V6ONLY
	}
	var tiers []tier
	if ip.Is4() {
		any4 := netip.IPv4Unspecified()
		tiers = append(tiers, tier{unix.AF_INET, ip, false})
		if ip != any4 {
			tiers = append(tiers,
				tier{unix.AF_INET, any4, false},
				tier{unix.AF_INET6, netip.AddrFrom16(ip.As16()), false})
		}
		tiers = append(tiers, tier{unix.AF_INET6, netip.IPv6Unspecified(), true})
	} else {
		tiers = append(tiers, tier{unix.AF_INET6, ip, false})
		if ip != netip.IPv6Unspecified() {
			tiers = append(tiers, tier{unix.AF_INET6, netip.IPv6Unspecified(), false})
		}
	}
	for _, t := range tiers {
		ls, err := s.tcpListeners(t.family)
		if err != nil {
			return err
		}
		for _, l := range ls {
			if l.ip == t.ip && l.port == port && !(t.dualOnly && l.v6only) {
				q.Listening = true
				q.Queued += l.queued
				q.Limit += l.limit
				q.Drops += uint64(l.drops)
			}
		}
		if q.Listening {
			if q.Queued > 0 && !s.viaProc[t.family] && !s.noAges {
				return s.oldest(q, t.family, t.ip, port, ls)
			}
			return nil
		}
	}
	return nil
}

// oldest sets q.OldestSeconds from the connections waiting to be accepted
// by the listeners of family bound to ip:port. A wildcard listener takes the
// connections to every local address but those that have a listener of
// their own on the port, among the listeners ls of the same family.
func (s *session) oldest(q *Queue, family int, ip netip.Addr, port uint16, ls []tcpListener) error {
	c, err := s.diag()
	var ws []waiting
	if err == nil {
		ws, err = c.dumpWaiting(family, port)
	}
	if err != nil {
		return fmt.Errorf("read %s connections to port %d: %w", familyName(family), port, err)
	}
	ip = ip.Unmap()
	exact := func(a netip.Addr) bool {
		for _, l := range ls {
			if l.port == port && l.ip.Unmap() == a {
				return true
			}
		}
		return false
	}
	var oldest uint32
	for _, w := range ws {
		if w.ip == ip || ip.IsUnspecified() && !exact(w.ip) {
			oldest = max(oldest, w.age)
		}
	}
	q.OldestSeconds = float64(oldest) / 1000
	return nil
}

// unixQueue finds the listener bound to path. The kernel keeps a listener's
// name after its file was unlinked or replaced, so several listeners can
// hold one name; then the file decides, when this process can see it, and
// else the newest socket does. The file is not consulted otherwise: the
// listener may live in another mount namespace, where its path names a
// file this process cannot see.
func (s *session) unixQueue(path string) (*unixListener, error) {
	ls, err := s.unixListeners()
	if err != nil {
		return nil, err
	}
	var named []unixListener
	for _, l := range ls {
		if l.path == path || filepath.Clean(l.path) == path {
			named = append(named, l)
		}
	}
	if len(named) == 0 {
		return nil, nil
	}
	best := named[0]
	if len(named) > 1 {
		best = slices.MaxFunc(named, func(a, b unixListener) int { return cmp.Compare(a.ino, b.ino) })
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			for _, l := range named {
				if l.vfsIno == uint32(st.Ino) && sameDev(l.vfsDev, st.Dev) {
					best = l
				}
			}
		}
	}
	return &best, nil
}

// sameDev compares a device number in the kernel's internal form
// (major<<20 | minor), as unix_diag reports it, with one from stat(2).
func sameDev(kdev uint32, dev uint64) bool {
	return kdev>>20 == unix.Major(dev) && kdev&(1<<20-1) == unix.Minor(dev)
}
