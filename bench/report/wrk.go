package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
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
}

// alternate warms up urls[0] (the instance that reports to notifyd, pid nd)
// and urls[1] (the floor), then runs o.rounds wrk rounds of conns
// connections on each, alternating. notifyd hears only from the first: its
// CPU time over all rounds is what their requests cost it.
func alternate(ctx context.Context, nd int, urls [2]string, conns int, o options) (reporting, error) {
	var r reporting
	for _, u := range urls {
		if _, err := wrk(ctx, u, conns, time.Second, false); err != nil {
			return r, err
		}
	}
	cpu0, err := cpuTime(nd)
	if err != nil {
		return r, err
	}
	for range o.rounds {
		for i, u := range urls {
			rate, err := wrk(ctx, u, conns, o.round, false)
			if err != nil {
				return r, err
			}
			if i == 0 {
				r.with = append(r.with, rate)
				r.served += rate * o.round.Seconds()
			} else {
				r.without = append(r.without, rate)
			}
		}
	}
	cpu1, err := cpuTime(nd)
	if err != nil {
		return r, err
	}
	r.perThousand = float64(cpu1-cpu0) / float64(time.Millisecond) / r.served * 1000
	return r, nil
}
