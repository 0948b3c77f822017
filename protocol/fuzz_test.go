package protocol

import (
	"errors"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"",
		"READY=1",
		"READY=1\nPID=1234\nSTATUS=serving requests",
		"READY=1 PID=1234",
		"READY=1 STATUS=hello big world\nMAINPID=77",
		"STOPPING=1\nPID=5\nMAINPID=5",
		"RELOADING=1\nMONOTONIC_USEC=123\nEXTEND_TIMEOUT_USEC=5",
		"WATCHDOG=1\nWATCHDOG_USEC=30000000",
		"WATCHDOG=trigger\nERRNO=0",
		"ERRNO=5\x00",
		"BARRIER=1",
		"FDSTORE=1\nFDNAME=x\n\nSTATUS=d\xc3\xa9j\xc3\xa0\tvu",
		"PID=abc\x00\x00",
		"X_NOTIFYD_IN_FLIGHT=1\nX_NOTIFYD_REQUESTS=41\nX_NOTIFYD_BUSY_USEC=6000123",
		"READY=1\nPID=9\nX_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0",
		"X_NOTIFYD_IN_FLIGHT=4294967296 X_NOTIFYD_REQUESTS=0 X_NOTIFYD_BUSY_USEC=18446744073709551616",
		"X_NOTIFYD_IN_FLIGHT=-1\nX_NOTIFYD_REQUESTS=2",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			var r *Rejection
			if !errors.As(err, &r) {
				t.Fatalf("Parse(%q) error %v is not a *Rejection", data, err)
			}
			if !sameMessage(m, Message{}) {
				t.Fatalf("Parse(%q) returned %s with error %v", data, describe(m), err)
			}
			return
		}
		if len(data) > MaxDatagramSize {
			t.Fatalf("Parse accepted %d bytes", len(data))
		}
		if m.Barrier && !sameMessage(m, Message{Barrier: true}) {
			t.Fatalf("Parse(%q) = %s: a barrier that carries more", data, describe(m))
		}
		if m.PID < 0 || m.PID > MaxPID {
			t.Fatalf("Parse(%q) = %s: pid out of range", data, describe(m))
		}
		b, err := m.Encode()
		if err != nil {
			t.Fatalf("Parse(%q) = %s, but Encode fails: %v", data, describe(m), err)
		}
		again, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(%q) = %s, Encode = %q, which Parse rejects: %v", data, describe(m), b, err)
		}
		if !sameMessage(again, m) {
			t.Fatalf("Parse(%q) = %s, Encode = %q, Parse again = %s", data, describe(m), b, describe(again))
		}
	})
}
