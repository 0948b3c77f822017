package registry

import (
	"testing"
	"time"
)

// BenchmarkSummary measures the health path: one Summary call, with 1 and
// with 200 real registered workers.
func BenchmarkSummary(b *testing.B) {
	for _, n := range []int{1, 200} {
		b.Run("workers="+itoa(n), func(b *testing.B) {
			cfg := Config{Dir: b.TempDir(), Filename: defaultPattern, ReapInterval: time.Hour}
			r := startRegistry(b, cfg)
			for range n {
				c := startSleep(b)
				send(b, r, ready(c.pid()), rootCreds())
			}
			if got := r.Summary(); got != (Summary{Ready: n, Workers: n}) {
				b.Fatalf("Summary() = %+v, want %d ready", got, n)
			}
			b.ReportAllocs()
			for b.Loop() {
				if r.Summary().Ready != n {
					b.Fatal("a worker stopped counting")
				}
			}
		})
	}
}

// BenchmarkRegister measures READY=1 then STOPPING=1 for one real process:
// each iteration writes the state file, then removes it.
func BenchmarkRegister(b *testing.B) {
	cfg := Config{Dir: b.TempDir(), Filename: defaultPattern, ReapInterval: time.Hour}
	r := startRegistry(b, cfg)
	c := startSleep(b)
	path := statePath(cfg.Dir, c.pid())
	b.ReportAllocs()
	for b.Loop() {
		send(b, r, ready(c.pid()), rootCreds())
		send(b, r, stopping(c.pid()), rootCreds())
	}
	if exists(path) {
		b.Fatalf("%s left behind", path)
	}
	if got := r.Summary(); got != (Summary{}) {
		b.Fatalf("Summary() = %+v, want nothing registered", got)
	}
}

// BenchmarkParseStat reads the start time out of a /proc/<pid>/stat line,
// as every new registration does.
func BenchmarkParseStat(b *testing.B) {
	line := []byte("12345 (gunicorn: worker [app]) S 12300 12300 12300 0 -1 4194560 2514 0 0 0 3 1 0 0 20 0 1 0 8371634 30109696 5270 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
	b.ReportAllocs()
	for b.Loop() {
		info, err := parseStat(line)
		if err != nil || info.startTime != 8371634 {
			b.Fatalf("parseStat = %+v, %v", info, err)
		}
	}
}
