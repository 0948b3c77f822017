//go:build linux

package registry

import (
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// BenchmarkExitDetection measures how soon the registry drops a worker that
// died, in process, with no HTTP request in the way. Each iteration
// registers a fresh sleep, kills it, and splits the time in two parts: the
// kernel's, from SIGKILL until the benchmark's own pidfd of the child wakes
// it (the child is a zombie, the earliest moment any exit detection can see
// the exit), and notifyd's, from that moment until the registry publishes
// its new Summary (OnChange, which the health answer reads). The registry
// wakes on a pidfd of its own at the same moment, so notifyd's part can come
// out below zero: it counts as zero then, and registry-first-% says how
// often. It reports the median and p99 of each part as kernel-p50-ns,
// kernel-p99-ns, notifyd-p50-ns and notifyd-p99-ns; ns/op is the whole
// iteration, the child's start included.
func BenchmarkExitDetection(b *testing.B) {
	changed := make(chan time.Time, 1)
	cfg := testConfig(b)
	cfg.OnChange = func(s Summary) {
		if s.Ready == 0 {
			select {
			case changed <- time.Now():
			default:
			}
		}
	}
	r := startRegistry(b, cfg)
	var kernel, notifyd []time.Duration
	first := 0
	for b.Loop() {
		c := startSleep(b)
		send(b, r, ready(c.pid()), rootCreds())
		pidfd, err := unix.PidfdOpen(c.pid(), 0)
		if err != nil {
			b.Fatalf("pidfd_open: %v", err)
		}
		select {
		case <-changed: // a change before this worker's registration
		default:
		}
		killed := time.Now()
		c.kill(b)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		zombie := time.Now()
		unix.Close(pidfd)
		select {
		case seen := <-changed:
			kernel = append(kernel, zombie.Sub(killed))
			notifyd = append(notifyd, max(0, seen.Sub(zombie)))
			if seen.Before(zombie) {
				first++
			}
		case <-time.After(waitFor):
			b.Fatalf("the registry still counts pid %d %s after it died", c.pid(), waitFor)
		}
		c.reap()
	}
	b.ReportMetric(float64(100*first)/float64(len(kernel)), "registry-first-%")
	for _, part := range []struct {
		name string
		ds   []time.Duration
	}{{"kernel", kernel}, {"notifyd", notifyd}} {
		slices.Sort(part.ds)
		b.ReportMetric(float64(part.ds[len(part.ds)/2]), part.name+"-p50-ns")
		b.ReportMetric(float64(part.ds[(len(part.ds)*99+99)/100-1]), part.name+"-p99-ns")
	}
}
