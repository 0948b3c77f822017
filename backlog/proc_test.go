package backlog

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProcListeners reads a real listener from /proc/net/tcp(6) and from
// sock_diag: both see the same queue, and only sock_diag sees the limit.
func TestProcListeners(t *testing.T) {
	for _, tt := range []struct {
		ip     string
		family int
	}{
		{"127.0.0.1", unix.AF_INET},
		{"::1", unix.AF_INET6},
	} {
		t.Run(tt.ip, func(t *testing.T) {
			ap := listenTCP(t, netip.MustParseAddr(tt.ip), 7, false)
			dial(t, "tcp", ap.String(), 5)
			readUntil(t, newReader(t, ap.String()), 0, 5)

			proc, err := procListeners(tt.family)
			if err != nil {
				t.Fatalf("procListeners: %v", err)
			}
			c, err := openDiag()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			diag, err := c.dumpTCP(tt.family)
			if err != nil {
				t.Fatalf("dumpTCP: %v", err)
			}
			want := tcpListener{ip: ap.Addr(), port: ap.Port(), queued: 5}
			if got := find(proc, ap); got != want {
				t.Errorf("/proc listener = %+v, want %+v", got, want)
			}
			want.limit = 7
			// bind(2) to an IPv6 address that is neither :: nor v4-mapped
			// sets IPV6_V6ONLY (__inet6_bind), and inet_diag says so.
			want.v6only = tt.family == unix.AF_INET6
			if got := find(diag, ap); got != want {
				t.Errorf("sock_diag listener = %+v, want %+v", got, want)
			}

			// The fallback answers through the same matching as sock_diag.
			other, err := procListeners(unix.AF_INET + unix.AF_INET6 - tt.family)
			if err != nil {
				t.Fatal(err)
			}
			s := &session{tcp: map[int][]tcpListener{tt.family: proc, unix.AF_INET + unix.AF_INET6 - tt.family: other},
				viaProc: map[int]bool{unix.AF_INET: true, unix.AF_INET6: true}}
			q, _, err := s.queue(mustParse(t, ap.String()))
			if err != nil {
				t.Fatal(err)
			}
			if wantQ := (Queue{Addr: ap.String(), Listening: true, Queued: 5}); q != wantQ {
				t.Errorf("queue from /proc = %+v, want %+v", q, wantQ)
			}
		})
	}
}

func find(ls []tcpListener, ap netip.AddrPort) tcpListener {
	for _, l := range ls {
		if l.ip == ap.Addr() && l.port == ap.Port() {
			return l
		}
	}
	return tcpListener{}
}

// procLine formats a line of /proc/net/tcp as get_tcp4_sock does.
func procLine(sl int, local, remote netip.AddrPort, state string, tx, rx uint32) string {
	word := func(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }
	return fmt.Sprintf("%4d: %08X:%04X %08X:%04X %s %08X:%08X 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0",
		sl, word(local.Addr()), local.Port(), word(remote.Addr()), remote.Port(), state, tx, rx, 1000+sl)
}

func TestParseProcNetTCP(t *testing.T) {
	ap := netip.MustParseAddrPort
	none := ap("0.0.0.0:0")
	text := strings.Join([]string{
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
		procLine(0, ap("127.0.0.1:8000"), none, "0A", 0, 5),
		procLine(1, ap("0.0.0.0:22"), none, "07", 0, 0), // a listener closing
		procLine(2, ap("10.1.2.3:80"), none, "0A", 0, 4096),
		procLine(3, ap("127.0.0.1:8000"), ap("127.0.0.1:50000"), "01", 0, 0),
		procLine(4, ap("0.0.0.0:81"), none, "0A", 0, 3), // past the listeners: never read
	}, "\n") + "\n"
	got, err := parseProcNetTCP(strings.NewReader(text), unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	want := []tcpListener{
		{ip: netip.MustParseAddr("127.0.0.1"), port: 8000, queued: 5},
		{ip: netip.MustParseAddr("10.1.2.3"), port: 80, queued: 4096},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("listener %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	for _, bad := range []struct{ name, line, err string }{
		{"short", "   0: 0100007F:1F40 0A", `line "   0: 0100007F:1F40 0A": too few fields`},
		{"bad address", "   0: 0100007:1F40 00000000:0000 0A 00000000:00000005", `local address "0100007:1F40": want 8 hex digits`},
		{"bad queues", "   0: 0100007F:1F40 00000000:0000 0A 00000005", `queues "00000005": want tx:rx`},
	} {
		t.Run(bad.name, func(t *testing.T) {
			_, err := parseProcNetTCP(strings.NewReader("header\n"+bad.line+"\n"), unix.AF_INET)
			if err == nil || err.Error() != bad.err {
				t.Errorf("error = %v, want %s", err, bad.err)
			}
		})
	}
}
