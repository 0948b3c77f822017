package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// idleSettle is the quiet time between the last registration and the start
// of the window, for work that registration left behind (a GC cycle, the
// scavenger) to finish.
const idleSettle = 3 * time.Second

// idleResult is the idle CPU measurement: two instances holding the same
// workers through the same window.
type idleResult struct {
	workers int
	window  time.Duration
	modes   []idleMode
}

type idleMode struct {
	label                       string
	flags                       []string
	cpu                         time.Duration
	switches                    uint64
	threadsBefore, threadsAfter int
}

func measureIdle(ctx context.Context, l *lab, window time.Duration) (*idleResult, error) {
	l.Progress("idle CPU: starting %d sleepers", fixedWorkers)
	ss, err := l.spawn(ctx, fixedWorkers, sleeperLife+window)
	if err != nil {
		return nil, err
	}
	defer l.reap(ss...)
	res := &idleResult{workers: fixedWorkers, window: window, modes: []idleMode{
		{label: "pidfd", flags: []string{"--exit-detection", "pidfd"}},
		{label: "sweep", flags: []string{"--exit-detection", "sweep", "--reap-interval", sweepInterval.String()}},
	}}
	ds := make([]*daemon, len(res.modes))
	for i, m := range res.modes {
		if ds[i], err = l.startDaemon(ctx, "idle-"+m.label, m.flags...); err != nil {
			return nil, err
		}
		if err := notify(ds[i], "READY=1\nPID=%d", pids(ss)); err != nil {
			return nil, err
		}
		if err := checkHealth(ds[i], fixedWorkers); err != nil {
			return nil, err
		}
	}
	if err := benchkit.Pause(ctx, idleSettle); err != nil {
		return nil, err
	}

	l.Progress("idle CPU: watching both instances for %s", window)
	before := make([]taskSample, len(ds))
	for i, d := range ds {
		if before[i], err = sampleTasks(d.pid()); err != nil {
			return nil, d.Explain(err)
		}
	}
	if err := benchkit.Pause(ctx, window); err != nil {
		return nil, err
	}
	for i, d := range ds {
		after, err := sampleTasks(d.pid())
		if err != nil {
			return nil, d.Explain(err)
		}
		m := &res.modes[i]
		m.cpu = after.cpu - before[i].cpu
		m.switches = after.switches - before[i].switches
		m.threadsBefore, m.threadsAfter = before[i].threads, after.threads
	}
	// Only now that the window is over: both must still hold every worker.
	for _, d := range ds {
		if err := checkHealth(d, fixedWorkers); err != nil {
			return nil, fmt.Errorf("after the window: %w", err)
		}
		if err := d.Stop(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// taskSample is a process's CPU time and context switches, summed over its
// threads.
type taskSample struct {
	cpu      time.Duration
	switches uint64
	threads  int
}

// sampleTasks reads /proc/<pid>/task/*/schedstat (its first field is the
// time spent on a CPU, in ns) and the voluntary and involuntary context
// switch counts of /proc/<pid>/task/*/status. Reading /proc does not wake the
// process. A thread that exits between listing and reading is skipped.
func sampleTasks(pid int) (taskSample, error) {
	var s taskSample
	dir := fmt.Sprintf("/proc/%d/task", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return s, fmt.Errorf("list threads of %d: %w", pid, err)
	}
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return s, fmt.Errorf("read schedstat of thread %s of %d: %w", e.Name(), pid, err)
		}
		f := strings.Fields(string(stat))
		if len(f) == 0 {
			return s, fmt.Errorf("schedstat of thread %s of %d is empty", e.Name(), pid)
		}
		ns, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return s, fmt.Errorf("schedstat of thread %s of %d: %w", e.Name(), pid, err)
		}
		status, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return s, fmt.Errorf("read status of thread %s of %d: %w", e.Name(), pid, err)
		}
		sw, err := contextSwitches(status)
		if err != nil {
			return s, fmt.Errorf("status of thread %s of %d: %w", e.Name(), pid, err)
		}
		s.cpu += time.Duration(ns)
		s.switches += sw
		s.threads++
	}
	return s, nil
}

// memory is a process's resident set: now and at its peak.
type memory struct {
	rssKiB, peakKiB uint64
}

// readMemory reads VmRSS and VmHWM from /proc/<pid>/status.
func readMemory(pid int) (memory, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, fmt.Errorf("read memory of %d: %w", pid, err)
	}
	var m memory
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		var dst *uint64
		switch {
		case !ok:
			continue
		case k == "VmRSS":
			dst = &m.rssKiB
		case k == "VmHWM":
			dst = &m.peakKiB
		default:
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("memory of %d: %s: %w", pid, k, err)
		}
		*dst = n
		found++
	}
	if found != 2 {
		return memory{}, fmt.Errorf("memory of %d: no VmRSS and VmHWM lines", pid)
	}
	return m, nil
}

// contextSwitches adds the voluntary_ctxt_switches and
// nonvoluntary_ctxt_switches lines of a /proc status file.
func contextSwitches(status []byte) (uint64, error) {
	var total uint64
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "voluntary_ctxt_switches" && k != "nonvoluntary_ctxt_switches") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", k, err)
		}
		total += n
		found++
	}
	if found != 2 {
		return 0, errors.New("no context switch counts")
	}
	return total, nil
}
