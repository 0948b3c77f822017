package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkRate matches wrk's summary of the run; wrkErrors any line that says a
// request failed: socket errors, or answers other than 2xx and 3xx.
var (
	wrkRate   = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkErrors = regexp.MustCompile(`(?m)^\s*(Socket errors|Non-2xx or 3xx responses).*$`)
)

// wrk loads url for d with one thread and conns connections, keep-alive
// unless closeEach, and returns the requests per second. A failed request
// fails the run: a rate of errors is no rate.
func wrk(ctx context.Context, url string, conns int, d time.Duration, closeEach bool) (float64, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + d.String(), "--timeout", "2s"}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	out, err := exec.CommandContext(ctx, "wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("wrk %s: %v\n%s", url, err, out)
	}
	if m := wrkErrors.Find(out); m != nil {
		return 0, fmt.Errorf("wrk %s: %s", url, m)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk %s printed no rate:\n%s", url, out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// wrkCommand is how the report shows a wrk run.
func wrkCommand(conns int, d time.Duration, closeEach bool) string {
	s := fmt.Sprintf("wrk -t1 -c%d -d%s --timeout 2s", conns, d)
	if closeEach {
		s += " -H 'Connection: close'"
	}
	return s + " URL"
}

// reporting is the outcome of alternating wrk rounds between an instance
// that reports to notifyd and the same instance without (the floor).
type reporting struct {
	with, without []float64 // requests/s of each round
	served        float64   // requests the reporting instance served
	perThousand   float64   // notifyd's CPU milliseconds per 1,000 of them
	// cpuWith and cpuWithout are the CPU time each instance's processes
	// spent per request served over the rounds: steadier than requests/s
	// on a machine that others share.
	cpuWith, cpuWithout time.Duration
}

// alternate warms up urls[0] (the instance that reports to notifyd, pid nd)
// and urls[1] (the floor), then runs o.rounds wrk rounds of conns
// connections on each, alternating. notifyd hears only from the first: its
// CPU time over all rounds is what their requests cost it. apps are the
// instances' main pids; each one's CPU time is that of the process and its
// children (the workers).
func alternate(ctx context.Context, nd int, urls [2]string, apps [2]int, conns int, o options) (reporting, error) {
	var r reporting
	for _, u := range urls {
		if _, err := wrk(ctx, u, conns, time.Second, false); err != nil {
			return r, err
		}
	}
	var cpu0, cpu1 [3]time.Duration
	pids := [3]int{nd, apps[0], apps[1]}
	for i, pid := range pids {
		var err error
		if cpu0[i], err = treeCPU(pid); err != nil {
			return r, err
		}
	}
	served := [2]float64{}
	for range o.rounds {
		for i, u := range urls {
			rate, err := wrk(ctx, u, conns, o.round, false)
			if err != nil {
				return r, err
			}
			served[i] += rate * o.round.Seconds()
			if i == 0 {
				r.with = append(r.with, rate)
			} else {
				r.without = append(r.without, rate)
			}
		}
	}
	for i, pid := range pids {
		var err error
		if cpu1[i], err = treeCPU(pid); err != nil {
			return r, err
		}
	}
	r.served = served[0]
	r.perThousand = float64(cpu1[0]-cpu0[0]) / float64(time.Millisecond) / r.served * 1000
	r.cpuWith = time.Duration(float64(cpu1[1]-cpu0[1]) / served[0])
	r.cpuWithout = time.Duration(float64(cpu1[2]-cpu0[2]) / served[1])
	return r, nil
}

// treeCPU is the CPU time of pid and of its children.
func treeCPU(pid int) (time.Duration, error) {
	total, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(b)) {
		child, err := strconv.Atoi(f)
		if err != nil {
			return 0, err
		}
		if t, err := cpuTime(child); err == nil {
			total += t
		}
	}
	return total, nil
}

// µs shows a duration in microseconds.
func µs(d time.Duration) string {
	return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
}
