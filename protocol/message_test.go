package protocol

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func strptr(s string) *string { return &s }

func boolptr(b bool) *bool { return &b }
func intptr(n int) *int    { return &n }

// sameMessage reports whether a and b say the same thing, comparing the
// Status text rather than the pointer.
func sameMessage(a, b Message) bool {
	if (a.Status == nil) != (b.Status == nil) {
		return false
	}
	if a.Status != nil && *a.Status != *b.Status {
		return false
	}
	if (a.Drain == nil) != (b.Drain == nil) || a.Drain != nil && *a.Drain != *b.Drain {
		return false
	}
	if (a.Activity == nil) != (b.Activity == nil) || a.Activity != nil && *a.Activity != *b.Activity {
		return false
	}
	if (a.Expect == nil) != (b.Expect == nil) || a.Expect != nil && *a.Expect != *b.Expect {
		return false
	}
	a.Status, b.Status, a.Drain, b.Drain, a.Activity, b.Activity = nil, nil, nil, nil, nil, nil
	a.Expect, b.Expect = nil, nil
	return a == b
}

func describe(m Message) string {
	status, activity := "<nil>", "<nil>"
	if m.Status != nil {
		status = strconv.Quote(*m.Status)
	}
	if a := m.Activity; a != nil {
		activity = "{InFlight:" + strconv.FormatUint(uint64(a.InFlight), 10) +
			" Requests:" + strconv.FormatUint(a.Requests, 10) +
			" BusyUSec:" + strconv.FormatUint(a.BusyUSec, 10) + "}"
	}
	return "{Lifecycle:" + m.Lifecycle.String() +
		" PID:" + strconv.Itoa(m.PID) +
		" Status:" + status +
		" Watchdog:" + strconv.FormatBool(m.Watchdog) +
		" WatchdogUSec:" + strconv.FormatUint(m.WatchdogUSec, 10) +
		" Failed:" + strconv.FormatBool(m.Failed) +
		" Errno:" + strconv.Itoa(m.Errno) +
		" Barrier:" + strconv.FormatBool(m.Barrier) +
		" Activity:" + activity + "}"
}

func activityOf(inFlight uint32, requests, busyUSec uint64) *Activity {
	return &Activity{InFlight: inFlight, Requests: requests, BusyUSec: busyUSec}
}

// statusOfLen returns a STATUS= datagram exactly n bytes long.
func statusOfLen(t *testing.T, n int) string {
	t.Helper()
	const prefix = "STATUS="
	if n < len(prefix) {
		t.Fatalf("statusOfLen(%d): shorter than %q", n, prefix)
	}
	return prefix + strings.Repeat("a", n-len(prefix))
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Message
		err  error // nil when the datagram must be accepted
	}{
		// Forms.
		{name: "newline form", in: "READY=1\nPID=1234\nSTATUS=serving", want: Message{Lifecycle: Ready, PID: 1234, Status: strptr("serving")}},
		{name: "newline form with trailing newline", in: "READY=1\nPID=1234\n", want: Message{Lifecycle: Ready, PID: 1234}},
		{name: "one-line form", in: "READY=1 PID=1234", want: Message{Lifecycle: Ready, PID: 1234}},
		{name: "one-line form with repeated spaces", in: "  READY=1   PID=1234  ", want: Message{Lifecycle: Ready, PID: 1234}},
		{name: "status takes the rest of the line", in: "STATUS=hello big world", want: Message{Status: strptr("hello big world")}},
		{name: "status in the middle of a one-line form", in: "READY=1 STATUS=hello big world PID=7", want: Message{Lifecycle: Ready, Status: strptr("hello big world PID=7")}},
		{name: "status ends at its newline", in: "READY=1 STATUS=two words\nPID=7", want: Message{Lifecycle: Ready, PID: 7, Status: strptr("two words")}},
		{name: "empty status", in: "STATUS=", want: Message{Status: strptr("")}},
		{name: "status keeps an equals sign", in: "STATUS=a=b", want: Message{Status: strptr("a=b")}},
		{name: "status keeps leading and trailing spaces", in: "STATUS=  x  ", want: Message{Status: strptr("  x  ")}},
		{name: "status with a tab", in: "STATUS=a\tb", want: Message{Status: strptr("a\tb")}},
		{name: "status with non-ASCII UTF-8", in: "STATUS=héllo wörld ✓", want: Message{Status: strptr("héllo wörld ✓")}},
		{name: "empty lines ignored", in: "\n\nREADY=1\n\n\nPID=5\n\n", want: Message{Lifecycle: Ready, PID: 5}},
		{name: "empty datagram", in: "", want: Message{}},
		{name: "only newlines", in: "\n\n", want: Message{}},
		{name: "only a NUL", in: "\x00", want: Message{}},

		// Keys and values.
		{name: "reloading", in: "RELOADING=1", want: Message{Lifecycle: Reloading}},
		{name: "stopping", in: "STOPPING=1", want: Message{Lifecycle: Stopping}},
		{name: "mainpid", in: "MAINPID=42", want: Message{PID: 42}},
		{name: "pid MaxPID", in: "PID=" + strconv.Itoa(MaxPID), want: Message{PID: MaxPID}},
		{name: "pid 1", in: "PID=1", want: Message{PID: 1}},
		{name: "pid with leading zeros", in: "PID=0012", want: Message{PID: 12}},
		{name: "watchdog heartbeat", in: "WATCHDOG=1", want: Message{Watchdog: true}},
		{name: "watchdog usec", in: "WATCHDOG_USEC=30000000", want: Message{WatchdogUSec: 30000000}},
		{name: "watchdog usec max uint64", in: "WATCHDOG_USEC=18446744073709551615", want: Message{WatchdogUSec: 18446744073709551615}},
		{name: "watchdog trigger", in: "WATCHDOG=trigger", want: Message{Failed: true}},
		{name: "errno", in: "ERRNO=5", want: Message{Failed: true, Errno: 5}},
		{name: "errno zero", in: "ERRNO=0", want: Message{Failed: true}},
		{name: "errno with watchdog trigger", in: "ERRNO=5\nWATCHDOG=trigger", want: Message{Failed: true, Errno: 5}},
		{name: "everything at once", in: "STOPPING=1\nSTATUS=bye\nMAINPID=9\nWATCHDOG=1\nWATCHDOG_USEC=5\nERRNO=3",
			want: Message{Lifecycle: Stopping, PID: 9, Status: strptr("bye"), Watchdog: true, WatchdogUSec: 5, Failed: true, Errno: 3}},

		// Activity.
		{name: "activity", in: "X_NOTIFYD_IN_FLIGHT=2\nX_NOTIFYD_REQUESTS=40\nX_NOTIFYD_BUSY_USEC=6000123", want: Message{Activity: activityOf(2, 40, 6000123)}},
		{name: "activity of an idle worker", in: "X_NOTIFYD_IN_FLIGHT=0 X_NOTIFYD_REQUESTS=0 X_NOTIFYD_BUSY_USEC=0", want: Message{Activity: activityOf(0, 0, 0)}},
		{name: "activity in any order", in: "X_NOTIFYD_BUSY_USEC=3\nX_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=2", want: Message{Activity: activityOf(1, 2, 3)}},
		{name: "activity with ready and pid", in: "READY=1\nPID=77\nX_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=5\nX_NOTIFYD_BUSY_USEC=9",
			want: Message{Lifecycle: Ready, PID: 77, Activity: activityOf(1, 5, 9)}},
		{name: "activity at the largest values", in: "X_NOTIFYD_IN_FLIGHT=4294967295\nX_NOTIFYD_REQUESTS=18446744073709551615\nX_NOTIFYD_BUSY_USEC=18446744073709551615",
			want: Message{Activity: activityOf(4294967295, 18446744073709551615, 18446744073709551615)}},
		{name: "activity with leading zeros", in: "X_NOTIFYD_IN_FLIGHT=01\nX_NOTIFYD_REQUESTS=002\nX_NOTIFYD_BUSY_USEC=0003", want: Message{Activity: activityOf(1, 2, 3)}},
		{name: "activity key repeated with the same value", in: "X_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=2\nX_NOTIFYD_BUSY_USEC=3", want: Message{Activity: activityOf(1, 2, 3)}},

		// Unknown keys.
		{name: "unknown key ignored", in: "READY=1\nFOO=bar", want: Message{Lifecycle: Ready}},
		{name: "unknown key in one-line form", in: "FOO=bar READY=1", want: Message{Lifecycle: Ready}},
		{name: "lower-case key is unknown", in: "ready=2", want: Message{}},
		{name: "extend timeout usec ignored", in: "EXTEND_TIMEOUT_USEC=5000000\nREADY=1", want: Message{Lifecycle: Ready}},
		{name: "monotonic usec ignored", in: "RELOADING=1\nMONOTONIC_USEC=123456", want: Message{Lifecycle: Reloading}},
		{name: "fdstore ignored", in: "FDSTORE=1", want: Message{}},
		{name: "fdname ignored", in: "FDSTORE=1\nFDNAME=x", want: Message{}},
		{name: "unknown key with any value", in: "X_CUSTOM=anything at all", want: Message{}},

		// Size.
		{name: "exactly 4096 bytes", in: statusOfLen(t, 4096), want: Message{Status: strptr(strings.Repeat("a", 4096-len("STATUS=")))}},
		{name: "4096 bytes ending in NUL", in: statusOfLen(t, 4095) + "\x00", want: Message{Status: strptr(strings.Repeat("a", 4095-len("STATUS=")))}},
		{name: "4097 bytes", in: statusOfLen(t, 4097), err: ErrTooLarge},
		{name: "4097 bytes ending in NUL", in: statusOfLen(t, 4096) + "\x00", err: ErrTooLarge},

		// NUL bytes.
		{name: "one trailing NUL", in: "READY=1\x00", want: Message{Lifecycle: Ready}},
		{name: "NUL in the middle", in: "READY=1\x00PID=5", err: ErrNUL},
		{name: "NUL at the start", in: "\x00READY=1", err: ErrNUL},
		{name: "two trailing NULs", in: "READY=1\x00\x00", err: ErrNUL},
		{name: "NUL inside status", in: "STATUS=a\x00b", err: ErrNUL},

		// Malformed.
		{name: "line without equals", in: "READY", err: ErrMalformed},
		{name: "second line without equals", in: "READY=1\nhello", err: ErrMalformed},
		{name: "empty key", in: "=1", err: ErrMalformed},
		{name: "key with a dash", in: "NOT-A-KEY=1", err: ErrMalformed},

		// Bad values.
		{name: "READY=2", in: "READY=2", err: ErrBadValue},
		{name: "READY empty", in: "READY=", err: ErrBadValue},
		{name: "RELOADING=0", in: "RELOADING=0", err: ErrBadValue},
		{name: "STOPPING=yes", in: "STOPPING=yes", err: ErrBadValue},
		{name: "one-line word without equals joins the value", in: "READY=1 now", err: ErrBadValue},
		{name: "PID=abc", in: "PID=abc", err: ErrBadValue},
		{name: "PID empty", in: "PID=", err: ErrBadValue},
		{name: "PID=0", in: "PID=0", err: ErrBadValue},
		{name: "PID=-1", in: "PID=-1", err: ErrBadValue},
		{name: "PID=+5", in: "PID=+5", err: ErrBadValue},
		{name: "PID=99999999999", in: "PID=99999999999", err: ErrBadValue},
		{name: "PID above MaxPID", in: "PID=" + strconv.Itoa(MaxPID+1), err: ErrBadValue},
		{name: "MAINPID=abc", in: "MAINPID=abc", err: ErrBadValue},
		{name: "WATCHDOG=2", in: "WATCHDOG=2", err: ErrBadValue},
		{name: "WATCHDOG=0", in: "WATCHDOG=0", err: ErrBadValue},
		{name: "WATCHDOG_USEC=0", in: "WATCHDOG_USEC=0", err: ErrBadValue},
		{name: "WATCHDOG_USEC=x", in: "WATCHDOG_USEC=x", err: ErrBadValue},
		{name: "WATCHDOG_USEC=+5", in: "WATCHDOG_USEC=+5", err: ErrBadValue},
		{name: "WATCHDOG_USEC overflows", in: "WATCHDOG_USEC=18446744073709551616", err: ErrBadValue},
		{name: "ERRNO=-1", in: "ERRNO=-1", err: ErrBadValue},
		{name: "ERRNO=+1", in: "ERRNO=+1", err: ErrBadValue},
		{name: "ERRNO=x", in: "ERRNO=x", err: ErrBadValue},
		{name: "ERRNO beyond 32 bits", in: "ERRNO=2147483648", err: ErrBadValue},

		{name: "in flight negative", in: "X_NOTIFYD_IN_FLIGHT=-1\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "requests negative", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=-5\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "busy usec with a plus sign", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=+5", err: ErrBadValue},
		{name: "in flight not digits", in: "X_NOTIFYD_IN_FLIGHT=two\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "requests in hex", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0x10\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "busy usec as a fraction", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=1.5", err: ErrBadValue},
		{name: "requests empty", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "in flight overflows 32 bits", in: "X_NOTIFYD_IN_FLIGHT=4294967296\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "requests overflow uint64", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=18446744073709551616\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},
		{name: "busy usec huge", in: "X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=99999999999999999999999999", err: ErrBadValue},
		{name: "bad activity spoils a ready", in: "READY=1\nX_NOTIFYD_IN_FLIGHT=x\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0", err: ErrBadValue},

		// Conflicts.
		{name: "PID and MAINPID agree", in: "PID=42\nMAINPID=42", want: Message{PID: 42}},
		{name: "PID and MAINPID disagree", in: "PID=42\nMAINPID=43", err: ErrConflict},
		{name: "MAINPID before PID disagree", in: "MAINPID=43 PID=42", err: ErrConflict},
		{name: "key repeated with the same value", in: "READY=1\nREADY=1\nSTATUS=x\nSTATUS=x", want: Message{Lifecycle: Ready, Status: strptr("x")}},
		{name: "key repeated with different values", in: "PID=1\nPID=2", err: ErrConflict},
		{name: "status repeated with different values", in: "STATUS=a\nSTATUS=b", err: ErrConflict},
		{name: "READY and STOPPING", in: "READY=1\nSTOPPING=1", err: ErrConflict},
		{name: "READY and RELOADING", in: "READY=1 RELOADING=1", err: ErrConflict},
		{name: "RELOADING and STOPPING", in: "RELOADING=1\nSTOPPING=1", err: ErrConflict},
		{name: "WATCHDOG 1 and trigger", in: "WATCHDOG=1\nWATCHDOG=trigger", err: ErrConflict},
		{name: "in flight alone", in: "X_NOTIFYD_IN_FLIGHT=1", err: ErrConflict},
		{name: "activity without busy time", in: "READY=1\nX_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=2", err: ErrConflict},
		{name: "activity key repeated with different values", in: "X_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_IN_FLIGHT=2\nX_NOTIFYD_REQUESTS=2\nX_NOTIFYD_BUSY_USEC=3", err: ErrConflict},
		{name: "activity with drain", in: "X_NOTIFYD_DRAIN=1\nX_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=2\nX_NOTIFYD_BUSY_USEC=3", err: ErrConflict},

		// Barrier.
		{name: "BARRIER=1 alone", in: "BARRIER=1", want: Message{Barrier: true}},
		{name: "BARRIER=1 with trailing newline and NUL", in: "BARRIER=1\n\x00", want: Message{Barrier: true}},
		{name: "BARRIER=1 twice", in: "BARRIER=1\nBARRIER=1", err: ErrBarrier},
		{name: "BARRIER=1 with an unknown key", in: "BARRIER=1\nX_FOO=bar", err: ErrBarrier},
		{name: "drain alone", in: "X_NOTIFYD_DRAIN=1", want: Message{Drain: boolptr(true)}},
		{name: "undrain alone", in: "X_NOTIFYD_DRAIN=0", want: Message{Drain: boolptr(false)}},
		{name: "drain with a worker key", in: "X_NOTIFYD_DRAIN=1\nREADY=1\nPID=5", err: ErrConflict},
		{name: "drain with an unknown key", in: "X_NOTIFYD_DRAIN=1 X_FOO=1", err: ErrConflict},
		{name: "drain with a bad value", in: "X_NOTIFYD_DRAIN=yes", err: ErrBadValue},
		{name: "expect alone", in: "X_NOTIFYD_EXPECT=4", want: Message{Expect: intptr(4)}},
		{name: "expect zero", in: "X_NOTIFYD_EXPECT=0", want: Message{Expect: intptr(0)}},
		{name: "expect with a worker key", in: "X_NOTIFYD_EXPECT=4\nREADY=1", err: ErrConflict},
		{name: "expect negative", in: "X_NOTIFYD_EXPECT=-1", err: ErrBadValue},
		{name: "expect beyond any pid count", in: "X_NOTIFYD_EXPECT=99999999", err: ErrBadValue},
		{name: "BARRIER=1 with READY=1", in: "BARRIER=1\nREADY=1", err: ErrBarrier},
		{name: "BARRIER=1 with PID", in: "BARRIER=1 PID=5", err: ErrBarrier},
		{name: "BARRIER=1 with STATUS", in: "STATUS=x\nBARRIER=1", err: ErrBarrier},
		{name: "BARRIER=1 with activity", in: "BARRIER=1\nX_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=2\nX_NOTIFYD_BUSY_USEC=3", err: ErrBarrier},
		{name: "BARRIER=2", in: "BARRIER=2", err: ErrBadValue},

		// STATUS text.
		{name: "status invalid UTF-8", in: "STATUS=a\xffb", err: ErrBadValue},
		{name: "status truncated UTF-8", in: "STATUS=\xc3", err: ErrBadValue},
		{name: "status carriage return", in: "STATUS=a\rb", err: ErrBadValue},
		{name: "status escape", in: "STATUS=\x1b[31mred", err: ErrBadValue},
		{name: "status DEL", in: "STATUS=a\x7f", err: ErrBadValue},
		{name: "status bell", in: "STATUS=\a", err: ErrBadValue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Parse(%q) error = %v, want %v", tt.in, err, tt.err)
				}
				var want *Rejection
				if !errors.As(tt.err, &want) {
					t.Fatalf("test error %v is not a *Rejection", tt.err)
				}
				if r := ReasonOf(err); r != want.Reason {
					t.Errorf("ReasonOf(%v) = %q, want %q", err, r, want.Reason)
				}
				if !sameMessage(got, Message{}) {
					t.Errorf("Parse(%q) returned %s with its error, want the zero Message", tt.in, describe(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) error = %v (reason %q), want none", tt.in, err, ReasonOf(err))
			}
			if !sameMessage(got, tt.want) {
				t.Errorf("Parse(%q) = %s, want %s", tt.in, describe(got), describe(tt.want))
			}
		})
	}
}

func TestRejectionReasons(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"too large", ErrTooLarge, "too_large"},
		{"control truncated", ErrControl, "control_truncated"},
		{"nul", ErrNUL, "nul_byte"},
		{"malformed", ErrMalformed, "malformed"},
		{"bad value", ErrBadValue, "bad_value"},
		{"conflict", ErrConflict, "conflict"},
		{"barrier", ErrBarrier, "bad_barrier"},
		{"no credentials", ErrNoCredentials, "no_credentials"},
		{"wrapped", errors.Join(errors.New("outer"), ErrConflict), "conflict"},
		{"not a rejection", errors.New("boom"), "error"},
		{"nil", nil, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReasonOf(tt.err); got != tt.want {
				t.Errorf("ReasonOf(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestParsePID(t *testing.T) {
	tests := []struct {
		in   string
		want int // 0 when rejected
	}{
		{"1", 1},
		{"1234", 1234},
		{strconv.Itoa(MaxPID), MaxPID},
		{"", 0},
		{"0", 0},
		{"-1", 0},
		{"+1", 0},
		{" 1", 0},
		{"1 ", 0},
		{"0x10", 0},
		{"1_000", 0},
		{strconv.Itoa(MaxPID + 1), 0},
		{"99999999999999999999999", 0},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			got, err := ParsePID(tt.in)
			if tt.want == 0 {
				if !errors.Is(err, ErrBadValue) {
					t.Fatalf("ParsePID(%q) = %d, %v; want an ErrBadValue", tt.in, got, err)
				}
				if got != 0 {
					t.Errorf("ParsePID(%q) = %d with its error, want 0", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParsePID(%q) = %d, %v; want %d, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestLifecycleString(t *testing.T) {
	tests := []struct {
		l    Lifecycle
		want string
	}{
		{NoLifecycle, "none"},
		{Ready, "READY=1"},
		{Reloading, "RELOADING=1"},
		{Stopping, "STOPPING=1"},
		{Lifecycle(99), "none"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.l.String(); got != tt.want {
				t.Errorf("Lifecycle(%d).String() = %q, want %q", tt.l, got, tt.want)
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want string // the exact encoding
	}{
		{name: "empty", m: Message{}, want: ""},
		{name: "ready", m: Message{Lifecycle: Ready}, want: "READY=1"},
		{name: "ready with pid and status", m: Message{Lifecycle: Ready, PID: 1234, Status: strptr("serving 3 requests")},
			want: "READY=1\nSTATUS=serving 3 requests\nPID=1234"},
		{name: "reloading", m: Message{Lifecycle: Reloading}, want: "RELOADING=1"},
		{name: "stopping with pid", m: Message{Lifecycle: Stopping, PID: MaxPID}, want: "STOPPING=1\nPID=" + strconv.Itoa(MaxPID)},
		{name: "empty status", m: Message{Status: strptr("")}, want: "STATUS="},
		{name: "status with spaces and tab", m: Message{Status: strptr("  a  b\tc ")}, want: "STATUS=  a  b\tc "},
		{name: "status that looks like assignments", m: Message{Status: strptr("READY=1 PID=5")}, want: "STATUS=READY=1 PID=5"},
		{name: "status in UTF-8", m: Message{Status: strptr("déjà vu ✓")}, want: "STATUS=déjà vu ✓"},
		{name: "heartbeat", m: Message{Watchdog: true}, want: "WATCHDOG=1"},
		{name: "watchdog usec", m: Message{WatchdogUSec: 18446744073709551615}, want: "WATCHDOG_USEC=18446744073709551615"},
		{name: "watchdog trigger", m: Message{Failed: true}, want: "WATCHDOG=trigger"},
		{name: "errno", m: Message{Failed: true, Errno: 5}, want: "ERRNO=5"},
		{name: "heartbeat and errno zero", m: Message{Watchdog: true, Failed: true}, want: "WATCHDOG=1\nERRNO=0"},
		{name: "heartbeat and errno", m: Message{Watchdog: true, Failed: true, Errno: 5}, want: "WATCHDOG=1\nERRNO=5"},
		{name: "barrier", m: Message{Barrier: true}, want: "BARRIER=1"},
		{name: "activity", m: Message{Activity: activityOf(3, 42, 6000000)},
			want: "X_NOTIFYD_IN_FLIGHT=3\nX_NOTIFYD_REQUESTS=42\nX_NOTIFYD_BUSY_USEC=6000000"},
		{name: "re-announcement", m: Message{Lifecycle: Ready, PID: 12, Activity: activityOf(0, 0, 0)},
			want: "READY=1\nPID=12\nX_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0"},
		{name: "largest activity", m: Message{Activity: activityOf(4294967295, 18446744073709551615, 18446744073709551615)},
			want: "X_NOTIFYD_IN_FLIGHT=4294967295\nX_NOTIFYD_REQUESTS=18446744073709551615\nX_NOTIFYD_BUSY_USEC=18446744073709551615"},
		{name: "everything", m: Message{Lifecycle: Stopping, PID: 9, Status: strptr("bye"), Watchdog: true, WatchdogUSec: 7, Failed: true, Errno: 3},
			want: "STOPPING=1\nSTATUS=bye\nPID=9\nWATCHDOG=1\nWATCHDOG_USEC=7\nERRNO=3"},
		{name: "largest status", m: Message{Status: strptr(strings.Repeat("a", MaxDatagramSize-len("STATUS=")))},
			want: statusOfLen(t, MaxDatagramSize)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.m.Encode()
			if err != nil {
				t.Fatalf("Encode(%s) error = %v", describe(tt.m), err)
			}
			if string(b) != tt.want {
				t.Errorf("Encode(%s) = %q, want %q", describe(tt.m), b, tt.want)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(Encode(%s)) = %q: error %v", describe(tt.m), b, err)
			}
			if !sameMessage(got, tt.m) {
				t.Errorf("Parse(Encode(m)) = %s, want %s", describe(got), describe(tt.m))
			}
		})
	}
}

func TestEncodeRefuses(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		err  error
	}{
		{name: "status with a newline", m: Message{Lifecycle: Ready, Status: strptr("one\ntwo")}, err: ErrBadValue},
		{name: "status with a carriage return", m: Message{Status: strptr("one\rtwo")}, err: ErrBadValue},
		{name: "status with a NUL", m: Message{Status: strptr("a\x00b")}, err: ErrBadValue},
		{name: "status with invalid UTF-8", m: Message{Status: strptr("\xff")}, err: ErrBadValue},
		{name: "status too long", m: Message{Status: strptr(strings.Repeat("s", MaxDatagramSize-len("STATUS=")+1))}, err: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.m.Encode()
			if !errors.Is(err, tt.err) {
				t.Fatalf("Encode(%s) = %q, %v; want error %v", describe(tt.m), b, err, tt.err)
			}
			if b != nil {
				t.Errorf("Encode(%s) returned %q with its error, want nil", describe(tt.m), b)
			}
		})
	}
}
