package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// wrkTimeout is wrk's own per-request timeout (--timeout), past which it
// counts a socket timeout error.
const wrkTimeout = 2 * time.Second

// wrkResult is what one wrk run reports.
type wrkResult struct {
	requests int64
	rate     float64 // the Requests/sec line
	// Socket errors, as wrk counts them.
	connect, read, write, timeout int64
	non2xx                        int64 // answers that were not 2xx or 3xx
}

// Lines of wrk's report, as wrk 4 prints them:
//
//	  10205 requests in 3.00s, 1.67MB read
//	  Socket errors: connect 0, read 3, write 0, timeout 0
//	  Non-2xx or 3xx responses: 5
//	Requests/sec:   3398.68
var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in \S+, \S+ read\s*$`)
	wrkRate     = regexp.MustCompile(`(?m)^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$`)
	wrkSocket   = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$`)
	wrkNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)\s*$`)
)

// parseWrk reads wrk's report. A line about errors that it cannot read is an
// error, so that a changed format cannot hide failures.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return r, errors.New(`no "N requests in" line in wrk's output`)
	}
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	if m = wrkRate.FindStringSubmatch(out); m == nil {
		return r, errors.New(`no "Requests/sec:" line in wrk's output`)
	}
	r.rate, _ = strconv.ParseFloat(m[1], 64)
	if strings.Contains(out, "Socket errors") {
		if m = wrkSocket.FindStringSubmatch(out); m == nil {
			return r, errors.New(`unreadable "Socket errors" line in wrk's output`)
		}
		for i, p := range []*int64{&r.connect, &r.read, &r.write, &r.timeout} {
			*p, _ = strconv.ParseInt(m[i+1], 10, 64)
		}
	}
	if strings.Contains(out, "Non-2xx") {
		if m = wrkNon2xx.FindStringSubmatch(out); m == nil {
			return r, errors.New(`unreadable "Non-2xx or 3xx responses" line in wrk's output`)
		}
		r.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// check fails unless every request was answered well.
func (r wrkResult) check() error {
	switch {
	case r.requests == 0 || r.rate <= 0:
		return errors.New("no request completed")
	case r.connect+r.read+r.write+r.timeout > 0:
		return fmt.Errorf("socket errors: connect %d, read %d, write %d, timeout %d", r.connect, r.read, r.write, r.timeout)
	case r.non2xx > 0:
		return fmt.Errorf("%d answers were not 2xx or 3xx", r.non2xx)
	}
	return nil
}

// wrkRun is one run of wrk.
type wrkRun struct {
	url         string
	header      string // an extra request header, or ""
	duration    time.Duration
	connections int
}

func (w wrkRun) args() []string {
	args := []string{
		"-t1", "-c" + strconv.Itoa(w.connections),
		"-d" + strconv.Itoa(int(w.duration/time.Second)) + "s",
		"--timeout", strconv.Itoa(int(wrkTimeout/time.Second)) + "s",
	}
	if w.header != "" {
		args = append(args, "-H", w.header)
	}
	return append(args, w.url)
}

// run runs wrk and returns its requests per second. It fails, with wrk's
// output, when wrk fails, its output cannot be read, or any request failed.
func (w wrkRun) run(ctx context.Context, wrk string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, w.duration+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, wrk, w.args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err == nil {
		var r wrkResult
		if r, err = parseWrk(string(out)); err == nil {
			err = r.check()
		}
		if err == nil {
			return r.rate, nil
		}
	}
	return 0, fmt.Errorf("%s: %w\n%s", benchkit.ShellWords(append([]string{"wrk"}, w.args()...)), err, out)
}
