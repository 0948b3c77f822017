package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
	"golang.org/x/sys/unix"
)

// sweepInterval is the baseline's --reap-interval. Each kill waits a random
// part of it first, so that kills land anywhere in the sweep's cycle: without
// that, every kill would follow the previous trial's sweep by the same few
// milliseconds, and the baseline would always look as bad as its worst case.
const sweepInterval = time.Second

// Bounds of one trial's poll loop: ten sweep cycles, or this many requests.
const (
	pollLimit = 10 * sweepInterval
	maxPolls  = 5_000_000
)

// sleeperLife is how long a sleeper lives unless killed: longer than any
// measurement that holds one.
const sleeperLife = 1000 * time.Second

// detector is one series of the death detection measurement: a notifyd
// instance and what was measured on it.
type detector struct {
	label     string
	d         *daemon
	latencies []time.Duration // SIGKILL to the first answer without the worker
	zombies   []time.Duration // SIGKILL to the zombie, as the benchmark's own pidfd shows it
	requests  []time.Duration // every request of every poll loop
	polls     []int           // requests per trial
}

func measureDeath(ctx context.Context, l *lab, trials int) ([]*detector, error) {
	l.Progress("death detection: %d trials per mode", trials)
	pidfd, err := l.startDaemon(ctx, "death-pidfd", "--exit-detection", "pidfd", "--reap-interval", "1h")
	if err != nil {
		return nil, err
	}
	sweep, err := l.startDaemon(ctx, "death-sweep", "--exit-detection", "sweep", "--reap-interval", sweepInterval.String())
	if err != nil {
		return nil, err
	}
	// notifyd says at start when it sweeps: the modes must be what they claim.
	const sweepLine = "exit detection by sweep"
	if pidfd.logContains(sweepLine) {
		return nil, fmt.Errorf("%s logged %q although started with --exit-detection pidfd", pidfd.Name, sweepLine)
	}
	if !sweep.logContains(sweepLine) {
		return nil, fmt.Errorf("%s did not log %q", sweep.Name, sweepLine)
	}
	dets := []*detector{{label: "pidfd", d: pidfd}, {label: "sweep", d: sweep}}
	for i := range trials {
		for _, det := range dets {
			if err := det.trial(ctx, l); err != nil {
				return nil, fmt.Errorf("%s trial %d: %w", det.label, i+1, err)
			}
		}
		if (i+1)%10 == 0 || i+1 == trials {
			l.Progress("death detection: %d/%d trials", i+1, trials)
		}
	}
	for _, d := range []*daemon{pidfd, sweep} {
		if err := d.Stop(); err != nil {
			return nil, err
		}
	}
	return dets, nil
}

// trial registers one fresh sleeper, kills it and times how long the health
// answer takes to stop counting it.
//
// The benchmark holds a pidfd of its own for the sleeper and sleeps on it
// after the kill, and starts polling the health endpoint only once the
// sleeper is a zombie. A poll loop running from the kill on would compete
// with the dying process for the CPUs, and delay the very exit it times. The
// answer that first leaves the worker out was asked after notifyd could have
// seen the exit, so the latency is an upper bound on when the answer changed.
func (det *detector) trial(ctx context.Context, l *lab) error {
	d := det.d
	ss, err := l.spawn(ctx, 1, sleeperLife)
	if err != nil {
		return err
	}
	s := ss[0]
	defer l.reap(s)
	if err := notify(d, "READY=1\nPID=%d", []int{s.pid}); err != nil {
		return err
	}
	if _, err := os.Stat(d.stateFile(s.pid)); err != nil {
		return fmt.Errorf("no state file after READY=1 and a barrier: %w", err)
	}
	fd, err := unix.PidfdOpen(s.pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", s.pid, err)
	}
	defer unix.Close(fd)
	h, err := dialHealth(d.addr)
	if err != nil {
		return d.Explain(err)
	}
	defer h.Close()
	jitter := rand.N(sweepInterval)
	h.setDeadline(time.Now().Add(jitter + pollLimit + httpTimeout))
	a, err := h.get()
	if err != nil {
		return d.Explain(err)
	}
	if !a.is(1) {
		return fmt.Errorf("before the kill: %w", a.mismatch(1))
	}
	if err := benchkit.Pause(ctx, jitter); err != nil {
		return err
	}

	t0 := time.Now()
	if err := s.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill sleeper %d: %w", s.pid, err)
	}
	if err := awaitReadable(fd, pollLimit); err != nil {
		return fmt.Errorf("killed sleeper %d: %w", s.pid, err)
	}
	det.zombies = append(det.zombies, time.Since(t0))
	for n := 1; ; n++ {
		start := time.Now()
		a, err := h.get()
		end := time.Now()
		if err != nil {
			return d.Explain(err)
		}
		det.requests = append(det.requests, end.Sub(start))
		if a.is(0) {
			det.latencies = append(det.latencies, end.Sub(t0))
			det.polls = append(det.polls, n)
			break
		}
		if !a.is(1) {
			return fmt.Errorf("after the kill: %w", a.mismatch(1))
		}
		if end.Sub(t0) > pollLimit || n >= maxPolls {
			return fmt.Errorf("killed pid %d still counted after %s and %d health requests", s.pid, end.Sub(t0).Round(time.Millisecond), n)
		}
	}
	// The state file follows the count: once a barrier is acknowledged,
	// notifyd has removed it.
	if err := notify(d, "", nil); err != nil {
		return err
	}
	if _, err := os.Stat(d.stateFile(s.pid)); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state file of killed pid %d still there after the count dropped and a barrier (stat: %v)", s.pid, err)
	}
	return nil
}

// awaitReadable sleeps in poll until the pidfd fd is readable, which is when
// its process has become a zombie, or fails after limit.
func awaitReadable(fd int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not a zombie after %s", limit)
		}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll its pidfd: %w", err)
		}
		if n > 0 && fds[0].Revents&unix.POLLIN != 0 {
			return nil
		}
	}
}
