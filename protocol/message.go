package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxDatagramSize is the largest datagram notifyd reads, in bytes. It is
// systemd's NOTIFY_BUFFER_MAX, so any message systemd accepts fits.
const MaxDatagramSize = 4096

// MaxPID is the largest pid Linux can hand out: pids stay below
// PID_MAX_LIMIT, 1<<22 on 64-bit.
const MaxPID = 1<<22 - 1

// Lifecycle is what a message says about its worker's life.
type Lifecycle uint8

// The lifecycle keys. NoLifecycle means the message carried none of them.
const (
	NoLifecycle Lifecycle = iota
	Ready                 // READY=1
	Reloading             // RELOADING=1
	Stopping              // STOPPING=1
)

func (l Lifecycle) String() string {
	switch l {
	case Ready:
		return "READY=1"
	case Reloading:
		return "RELOADING=1"
	case Stopping:
		return "STOPPING=1"
	}
	return "none"
}

// Message is one parsed notification. The zero value is an empty message.
type Message struct {
	Lifecycle Lifecycle

	// PID is the pid the message is about, from PID= or MAINPID=. Zero means
	// the sender's own pid.
	PID int

	// Status is the STATUS= text, or nil when the message did not set it.
	Status *string

	// Watchdog is true for a WATCHDOG=1 heartbeat.
	Watchdog bool

	// WatchdogUSec is the heartbeat deadline from WATCHDOG_USEC=, or zero.
	WatchdogUSec uint64

	// Failed is true when the worker declared itself failed with
	// WATCHDOG=trigger or ERRNO=. Errno holds the ERRNO= value, if any.
	Failed bool
	Errno  int

	// Barrier is true for BARRIER=1. Such a message carries nothing else.
	Barrier bool

	// Drain is set by notifyd's own extension X_NOTIFYD_DRAIN=1 (drain the
	// instance: fail the health check while the registry keeps working) or
	// X_NOTIFYD_DRAIN=0 (undrain); nil when the message has neither.
	Drain *bool

	// Expect is set by notifyd's own extension X_NOTIFYD_EXPECT=n: the
	// instance is now configured to run n workers (the runtime --expect, as
	// gunicorn's TTIN and TTOU change it); nil when the message has none.
	Expect *int

	// Activity is the worker's activity from X_NOTIFYD_IN_FLIGHT=,
	// X_NOTIFYD_REQUESTS= and X_NOTIFYD_BUSY_USEC=, which come together; nil
	// when the message has none of them.
	Activity *Activity

	// HasPage is set by X_NOTIFYD_PAGE=1, which comes with READY=1 and one
	// file descriptor: the worker's activity page.
	HasPage bool

	// Page is that page, checked and mapped by the Server before the message
	// is handled; nil otherwise. The Handler owns it: it keeps it or closes
	// it, whatever it returns.
	Page *Page
}

// Activity is what a worker reports about its requests, notifyd's own
// extension to sd_notify. The values are absolute, never deltas, so a
// datagram that is lost costs nothing: the next one carries the truth.
type Activity struct {
	// InFlight is the number of requests the worker is serving now. 32
	// bits are more than any worker serves at once, and keep the sum over
	// every possible pid within 64 bits.
	InFlight uint32
	// Requests is the number of requests it has finished since it booted.
	Requests uint64
	// BusyUSec is how many microseconds it has spent with at least one
	// request in flight since it booted.
	BusyUSec uint64
}

// The keys notifyd acts on. Their order is the order Encode writes them in.
const (
	keyReady = iota
	keyReloading
	keyStopping
	keyStatus
	keyPID
	keyMainPID
	keyWatchdog
	keyWatchdogUSec
	keyErrno
	keyBarrier
	keyDrain
	keyExpect
	keyInFlight
	keyRequests
	keyBusyUSec
	keyPage
	numKeys
)

var keyNames = [numKeys]string{
	keyReady:        "READY",
	keyReloading:    "RELOADING",
	keyStopping:     "STOPPING",
	keyStatus:       "STATUS",
	keyPID:          "PID",
	keyMainPID:      "MAINPID",
	keyWatchdog:     "WATCHDOG",
	keyWatchdogUSec: "WATCHDOG_USEC",
	keyErrno:        "ERRNO",
	keyBarrier:      "BARRIER",
	keyDrain:        "X_NOTIFYD_DRAIN",
	keyExpect:       "X_NOTIFYD_EXPECT",
	keyInFlight:     "X_NOTIFYD_IN_FLIGHT",
	keyRequests:     "X_NOTIFYD_REQUESTS",
	keyBusyUSec:     "X_NOTIFYD_BUSY_USEC",
	keyPage:         "X_NOTIFYD_PAGE",
}

func lookupKey(name string) int {
	for i, k := range keyNames {
		if k == name {
			return i
		}
	}
	return -1
}

// Parse parses one datagram. It returns a *Rejection-wrapping error that says
// what was wrong when the datagram must be rejected whole.
func Parse(b []byte) (Message, error) {
	if len(b) > MaxDatagramSize {
		return Message{}, fmt.Errorf("%w (got %d)", ErrTooLarge, len(b))
	}
	if n := len(b); n > 0 && b[n-1] == 0 {
		b = b[:n-1]
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return Message{}, fmt.Errorf("%w (at offset %d)", ErrNUL, i)
	}
	var p parser
	for line := range strings.SplitSeq(string(b), "\n") {
		if err := p.line(line); err != nil {
			return Message{}, err
		}
	}
	return p.message()
}

// parser collects the values of the known keys of one message.
type parser struct {
	values      [numKeys]string
	seen        [numKeys]bool
	assignments int // of any key, known or not
}

// line splits one line into assignments. A line holds one assignment, or
// several separated by spaces (the one-line form). A space-separated word
// without "=" continues the value before it, and STATUS= takes the rest of
// the line.
func (p *parser) line(line string) error {
	key, valStart, valEnd := "", 0, 0
	flush := func() error {
		if key == "" {
			return nil
		}
		return p.assign(key, line[valStart:valEnd])
	}
	for i := 0; i < len(line); {
		if line[i] == ' ' {
			i++
			continue
		}
		end := strings.IndexByte(line[i:], ' ')
		if end < 0 {
			end = len(line)
		} else {
			end += i
		}
		name, _, ok := strings.Cut(line[i:end], "=")
		switch {
		case ok && isKeyName(name):
			if err := flush(); err != nil {
				return err
			}
			key, valStart, valEnd = name, i+len(name)+1, end
			if name == "STATUS" {
				valEnd = len(line)
				end = len(line)
			}
		case key != "":
			valEnd = end
		default:
			return fmt.Errorf("%w: %q", ErrMalformed, line)
		}
		i = end
	}
	return flush()
}

func isKeyName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func (p *parser) assign(name, value string) error {
	p.assignments++
	k := lookupKey(name)
	if k < 0 {
		return nil // unknown keys are ignored, as systemd ignores them
	}
	if p.seen[k] {
		if p.values[k] != value {
			return fmt.Errorf("%w: %s=%q and %s=%q", ErrConflict, name, p.values[k], name, value)
		}
		return nil
	}
	p.seen[k], p.values[k] = true, value
	return nil
}

func (p *parser) message() (Message, error) {
	var m Message
	var activity Activity
	for k := range numKeys {
		if !p.seen[k] {
			continue
		}
		if err := p.field(k, p.values[k], &m, &activity); err != nil {
			return Message{}, err
		}
	}
	return p.whole(m, activity)
}

// field checks the value v of key k and sets it in m, or a for the activity
// keys.
func (p *parser) field(k int, v string, m *Message, a *Activity) error {
	var err error
	switch k {
	case keyReady, keyReloading, keyStopping, keyBarrier:
		err = wantOne(k, v)
	case keyStatus:
		err = checkStatus(v)
		m.Status = &v
	case keyPID, keyMainPID:
		var pid int
		pid, err = ParsePID(v)
		if err == nil && m.PID != 0 && m.PID != pid {
			err = fmt.Errorf("%w: PID=%d and MAINPID=%d", ErrConflict, m.PID, pid)
		}
		m.PID = pid
	case keyWatchdog:
		switch v {
		case "1":
			m.Watchdog = true
		case "trigger":
			m.Failed = true
		default:
			err = fmt.Errorf(`%w: WATCHDOG=%q, want "1" or "trigger"`, ErrBadValue, v)
		}
	case keyWatchdogUSec:
		m.WatchdogUSec, err = ParseWatchdogUSec(v)
		if err == nil && m.WatchdogUSec == 0 {
			err = errors.New("want a positive number of microseconds")
		}
		if err != nil {
			err = fmt.Errorf("%w: WATCHDOG_USEC=%q: %w", ErrBadValue, v, err)
		}
	case keyDrain:
		if v != "0" && v != "1" {
			err = fmt.Errorf("%w: X_NOTIFYD_DRAIN=%q, want 1 or 0", ErrBadValue, v)
		}
		drain := v == "1"
		m.Drain = &drain
	case keyExpect:
		var n uint64
		n, err = parseCount(k, v, MaxPID)
		expect := int(n)
		m.Expect = &expect
	case keyErrno:
		var n int64
		n, err = strconv.ParseInt(v, 10, 32)
		if err != nil || n < 0 || !isDigits(v) {
			err = fmt.Errorf("%w: ERRNO=%q, want a non-negative error number", ErrBadValue, v)
		}
		m.Failed, m.Errno = true, int(n)
	case keyInFlight:
		var n uint64
		n, err = parseCount(k, v, math.MaxUint32)
		a.InFlight = uint32(n)
	case keyRequests:
		a.Requests, err = parseCount(k, v, math.MaxUint64)
	case keyBusyUSec:
		a.BusyUSec, err = parseCount(k, v, math.MaxUint64)
	case keyPage:
		err = wantOne(k, v)
		m.HasPage = true
	}
	return err
}

// count is how many of keys the message has.
func (p *parser) count(keys ...int) int {
	n := 0
	for _, k := range keys {
		if p.seen[k] {
			n++
		}
	}
	return n
}

// whole checks what m may hold together: a barrier and the instance keys
// alone, the three activity keys together, one lifecycle at most, a page
// only with READY=1; and sets the lifecycle.
func (p *parser) whole(m Message, activity Activity) (Message, error) {
	if p.seen[keyBarrier] {
		if p.assignments > 1 {
			return Message{}, fmt.Errorf("%w: it came with other assignments", ErrBarrier)
		}
		m.Barrier = true
		return m, nil
	}
	if p.seen[keyDrain] && p.assignments > 1 {
		return Message{}, fmt.Errorf("%w: X_NOTIFYD_DRAIN must come alone; it is about the instance, not a worker", ErrConflict)
	}
	if p.seen[keyExpect] && p.assignments > 1 {
		return Message{}, fmt.Errorf("%w: X_NOTIFYD_EXPECT must come alone; it is about the instance, not a worker", ErrConflict)
	}
	switch p.count(keyInFlight, keyRequests, keyBusyUSec) {
	case 0:
	case 3:
		m.Activity = &activity
	default:
		// The three are one snapshot: a lone counter could not be told
		// apart from one whose companions went backwards.
		return Message{}, fmt.Errorf("%w: X_NOTIFYD_IN_FLIGHT, X_NOTIFYD_REQUESTS and X_NOTIFYD_BUSY_USEC come together or not at all", ErrConflict)
	}
	if p.count(keyReady, keyReloading, keyStopping, keyBarrier) > 1 {
		return Message{}, fmt.Errorf("%w: at most one of READY=1, RELOADING=1 and STOPPING=1 per message", ErrConflict)
	}
	if m.HasPage && !p.seen[keyReady] {
		return Message{}, fmt.Errorf("%w: it came without READY=1", ErrPage)
	}
	switch {
	case p.seen[keyReady]:
		m.Lifecycle = Ready
	case p.seen[keyReloading]:
		m.Lifecycle = Reloading
	case p.seen[keyStopping]:
		m.Lifecycle = Stopping
	}
	return m, nil
}

func wantOne(k int, v string) error {
	if v != "1" {
		return fmt.Errorf("%w: %s=%q, want 1", ErrBadValue, keyNames[k], v)
	}
	return nil
}

// parseCount parses the value of an activity key: decimal digits only, no
// sign, from 0 to limit.
func parseCount(k int, v string, limit uint64) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || !isDigits(v) || n > limit {
		return 0, fmt.Errorf("%w: %s=%q, want a whole number from 0 to %d", ErrBadValue, keyNames[k], v, limit)
	}
	return n, nil
}

// checkStatus refuses STATUS= text that would not show as one clean line in
// logs, state files and terminals: invalid UTF-8, C0 and C1 control
// characters other than tab, and the Unicode line and paragraph separators.
func checkStatus(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: STATUS=%q is not valid UTF-8", ErrBadValue, s)
	}
	for _, r := range s {
		if r < ' ' && r != '\t' || 0x7f <= r && r <= 0x9f || r == 0x2028 || r == 0x2029 {
			return fmt.Errorf("%w: STATUS=%q holds a control character", ErrBadValue, s)
		}
	}
	return nil
}

// WatchdogInfinity is the WATCHDOG_USEC value that means no deadline at all,
// as in systemd, where it is USEC_INFINITY.
const WatchdogInfinity = math.MaxUint64

// MaxWatchdogUSec is the longest heartbeat deadline notifyd can time: the
// largest time.Duration, about 292 years, in microseconds. A longer one
// would overflow into the past and make a worker hung at once.
const MaxWatchdogUSec = math.MaxInt64 / 1000

// ParseWatchdogUSec parses a heartbeat deadline in microseconds: decimal
// digits from 0 to MaxWatchdogUSec, or WatchdogInfinity for none. Anything
// else is an error that says what is allowed.
func ParseWatchdogUSec(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || !isDigits(s) {
		return 0, fmt.Errorf("want a whole number of microseconds")
	}
	if n > MaxWatchdogUSec && n != WatchdogInfinity {
		return 0, fmt.Errorf("longer than the %d microseconds (about 292 years) notifyd can time; %d means no deadline", uint64(MaxWatchdogUSec), uint64(WatchdogInfinity))
	}
	return n, nil
}

// ParsePID parses a pid as the wire protocol writes it: decimal digits only,
// from 1 to MaxPID.
func ParsePID(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || !isDigits(s) || n < 1 || n > MaxPID {
		return 0, fmt.Errorf("%w: pid %q, want a number from 1 to %d", ErrBadValue, s, MaxPID)
	}
	return n, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// Encode writes m in the newline form, one assignment a line, in a fixed key
// order. It returns an error when m could not be parsed back, for example a
// STATUS with a newline.
func (m Message) Encode() ([]byte, error) {
	var b []byte
	add := func(k int, v string) {
		if len(b) > 0 {
			b = append(b, '\n')
		}
		b = append(b, keyNames[k]...)
		b = append(b, '=')
		b = append(b, v...)
	}
	switch m.Lifecycle {
	case Ready:
		add(keyReady, "1")
	case Reloading:
		add(keyReloading, "1")
	case Stopping:
		add(keyStopping, "1")
	}
	if m.Status != nil {
		if err := checkStatus(*m.Status); err != nil {
			return nil, err
		}
		add(keyStatus, *m.Status)
	}
	if m.PID != 0 {
		add(keyPID, strconv.Itoa(m.PID))
	}
	if m.Watchdog {
		add(keyWatchdog, "1")
	}
	if m.WatchdogUSec != 0 {
		add(keyWatchdogUSec, strconv.FormatUint(m.WatchdogUSec, 10))
	}
	if m.Failed {
		// ERRNO= says "failed" too, and unlike WATCHDOG=trigger it can stand
		// beside a WATCHDOG=1 heartbeat.
		if m.Errno != 0 || m.Watchdog {
			add(keyErrno, strconv.Itoa(m.Errno))
		} else {
			add(keyWatchdog, "trigger")
		}
	}
	if a := m.Activity; a != nil {
		add(keyInFlight, strconv.FormatUint(uint64(a.InFlight), 10))
		add(keyRequests, strconv.FormatUint(a.Requests, 10))
		add(keyBusyUSec, strconv.FormatUint(a.BusyUSec, 10))
	}
	if m.HasPage {
		add(keyPage, "1")
	}
	if m.Barrier {
		add(keyBarrier, "1")
	}
	if m.Drain != nil {
		add(keyDrain, map[bool]string{true: "1", false: "0"}[*m.Drain])
	}
	if m.Expect != nil {
		add(keyExpect, strconv.Itoa(*m.Expect))
	}
	if len(b) > MaxDatagramSize {
		return nil, fmt.Errorf("%w (got %d)", ErrTooLarge, len(b))
	}
	return b, nil
}
