package backlog

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// TestOldestTCP: the age of a waiting TCP connection is the kernel's time
// since its request arrived. It cannot exceed the time since the test
// dialled, nor fall short of the time the test waited after its request
// was sent, less the kernel's clock tick.
func TestOldestTCP(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			ap := listenTCP(t, netip.MustParseAddr(ip), 7, false)
			r := newReader(t, ap.String())
			if qs, err := r.Read(); err != nil || qs[0].OldestSeconds != 0 {
				t.Fatalf("empty queue: %+v, %v; want an age of 0", qs, err)
			}
			dialled := time.Now()
			c, err := net.DialTimeout("tcp", ap.String(), settle)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			time.Sleep(300 * time.Millisecond) // the age to measure
			readUntil(t, r, 0, 1)
			waited := time.Since(sent)
			qs, err := r.Read()
			if err != nil {
				t.Fatal(err)
			}
			upper := time.Since(dialled)
			got := time.Duration(qs[0].OldestSeconds * float64(time.Second))
			if got < waited-10*time.Millisecond || got > upper+10*time.Millisecond {
				t.Fatalf("oldest = %v, want between %v and %v", got, waited, upper)
			}
		})
	}
}

// TestOldestTCPWildcard: a wildcard listener's waiting connections count,
// and those of another port do not.
func TestOldestTCPWildcard(t *testing.T) {
	ap := listenTCP(t, netip.MustParseAddr("0.0.0.0"), 7, false)
	other := listenTCP(t, netip.MustParseAddr("127.0.0.1"), 7, false)
	dial(t, "tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), other.Port()).String(), 1)
	// The other port's connection waits, with an age to lend.
	waiting := newReader(t, other.String())
	deadline := time.Now().Add(settle)
	for qs := readUntil(t, waiting, 0, 1); qs[0].OldestSeconds == 0; qs = readUntil(t, waiting, 0, 1) {
		if time.Now().After(deadline) {
			t.Fatalf("the connection waiting on %s has no age: %+v", other, qs[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := newReader(t, ap.String())
	if qs, err := r.Read(); err != nil || qs[0].Queued != 0 || qs[0].OldestSeconds != 0 {
		t.Fatalf("empty queue beside a busy port: %+v, %v; want an age of 0", qs, err)
	}
	dial(t, "tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String(), 1)
	deadline = time.Now().Add(settle)
	for {
		qs := readUntil(t, r, 0, 1)
		if qs[0].OldestSeconds > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a connection waited on %s without an age: %+v", ap, qs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDropsTCP: connections that arrive at a full queue are counted by the
// listener's drop counter.
func TestDropsTCP(t *testing.T) {
	ap := listenTCP(t, netip.MustParseAddr("127.0.0.1"), 1, false)
	r := newReader(t, ap.String())
	dial(t, "tcp", ap.String(), 2) // a backlog of 1 admits 2
	readUntil(t, r, 0, 2)
	if qs, _ := r.Read(); qs[0].Drops != 0 {
		t.Fatalf("drops before the queue overflowed = %d, want 0", qs[0].Drops)
	}
	for range 3 {
		// The kernel drops the SYN; the client would retry for a minute.
		if c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond); err == nil {
			c.Close()
		}
	}
	qs, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	if qs[0].Drops < 1 {
		t.Fatalf("drops after 3 connections to a full queue = %d, want at least 1", qs[0].Drops)
	}
}

// TestOldestUnix: a Unix connection's age counts from the first read that
// saw it waiting, and is forgotten once it is accepted.
func TestOldestUnix(t *testing.T) {
	ln, path := listenUnixAccepting(t)
	r := newReader(t, "unix:"+path)
	dial(t, "unix", path, 1)
	before := time.Now()
	first := readUntil(t, r, 0, 1)
	firstDone := time.Now()
	if first[0].OldestSeconds > firstDone.Sub(before).Seconds() {
		t.Fatalf("first sight: oldest = %v s, want at most the read's own %v", first[0].OldestSeconds, firstDone.Sub(before))
	}
	time.Sleep(200 * time.Millisecond) // the age to measure
	secondStart := time.Now()
	qs, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	upper := time.Since(before).Seconds()
	if lower := secondStart.Sub(firstDone).Seconds(); qs[0].OldestSeconds < lower || qs[0].OldestSeconds > upper {
		t.Fatalf("oldest = %v s, want between %v and %v", qs[0].OldestSeconds, lower, upper)
	}
	accept(t, ln, 1)
	if qs := readUntil(t, r, 0, 0); qs[0].OldestSeconds != 0 {
		t.Fatalf("after accept: %+v, want an age of 0", qs[0])
	}
	dial(t, "unix", path, 1)
	if qs := readUntil(t, r, 0, 1); qs[0].OldestSeconds > time.Since(secondStart).Seconds()/2 {
		t.Fatalf("a new connection inherited an age: %+v", qs[0])
	}
}

// TestPeak: a queue that came and went between two reads of the caller
// still shows in the peak, which any read between them saw.
func TestPeak(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(shortDir(t), "app.sock")
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			watch := ln.Addr().String()
			if network == "unix" {
				watch = "unix:" + watch
			}
			r := newReader(t, watch)
			dial(t, network, ln.Addr().String(), 3)
			readUntil(t, r, 0, 3)
			accept(t, ln, 3)
			if qs := readUntil(t, r, 0, 0); qs[0].Peak != 3 {
				t.Fatalf("after the queue emptied: %+v, want a peak of 3", qs[0])
			}
		})
	}
}

func TestPeakWindow(t *testing.T) {
	var p peakWindow
	for i := range p {
		p[i].second = -int64(len(p))
	}
	steps := []struct {
		second int64
		queued uint32
		want   uint32
	}{
		{0, 0, 0},
		{0, 5, 5},
		{1, 2, 5},
		{59, 0, 5}, // second 0 is still in the window that ends at 59
		{60, 1, 2}, // and no longer in the one that ends at 60
		{61, 0, 1},
		{200, 0, 0}, // a long quiet spell forgets everything
	}
	for _, s := range steps {
		if got := p.note(s.second, s.queued); got != s.want {
			t.Fatalf("note(%d, %d) = %d, want %d", s.second, s.queued, got, s.want)
		}
	}
}
