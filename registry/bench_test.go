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
