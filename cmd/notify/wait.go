//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/notifyd/notifyd/httpapi"
)

// pollInterval is the least time between two asks of /status: ten a second
// at most, under the twenty a second a deploy script may cost notifyd, and
// soon enough that a script learns of its workers within a tenth of a second.
const pollInterval = 100 * time.Millisecond

// runWait blocks until at least --ready workers are ready; with --fresh,
// workers that became ready after the wait began, so that a deploy script
// waits for the workers a HUP started, not for the ones it replaces. It
// exits 0 then, 1 at the timeout (or at an answer that is not /status), and
// 2 on a usage error.
func runWait(args []string, stdout io.Writer) error {
	// The wait begins when notify starts: a worker ready before then is old.
	began := time.Now()
	fs := flag.NewFlagSet("notify wait", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	want := fs.Int("ready", 0, "how many ready workers to wait for (required)")
	fresh := fs.Bool("fresh", false, "count only workers that became ready after the wait began")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait")
	base := fs.String("url", defaultURL(), "notifyd's HTTP address, from $NOTIFYD_BIND if set; /status is asked relative to it")
	if err := parseSubcommand(fs, args, stdout, "notify wait --ready N [--fresh] [--timeout D] [--url URL]",
		"Wait until at least N workers are ready, asking notifyd's /status ten times a second\nat most. Exit 0 then, 1 at the timeout, 2 on a usage error."); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case !set["ready"]:
		return usagef("notify wait needs --ready N, the number of workers to wait for")
	case *want < 1:
		return usagef("--ready %d: must be a number of workers, at least 1", *want)
	case *timeout <= 0:
		return usagef("--timeout %s: must be a positive duration such as 60s", *timeout)
	}
	url, err := statusURL("url", *base)
	if err != nil {
		return err
	}

	deadline := began.Add(*timeout)
	what := "workers"
	if *fresh {
		what = "fresh workers"
	}
	var (
		last    httpapi.StatusAnswer // the last document notifyd answered
		answers int
		failed  error // why the last ask failed, if it did
	)
	for {
		asked := time.Now()
		// An ask may take as long as the wait has left, and at least
		// askFloor: a wait that is almost over still hears a prompt answer
		// out, and a server that never answers keeps the wait past
		// --timeout by askFloor at most.
		doc, _, err := askStatus(url, max(time.Until(deadline), askFloor))
		var bad *badAnswer
		switch {
		case errors.As(err, &bad) && !bad.retry:
			return err
		case err != nil:
			failed = err
		default:
			last, answers, failed = doc, answers+1, nil
			if n := countReady(doc, *fresh, began); n >= *want {
				fmt.Fprintf(stdout, "%d %s ready\n", n, what)
				return nil
			}
		}
		next := asked.Add(pollInterval)
		if next.After(deadline) {
			time.Sleep(max(time.Until(deadline), 0))
			return timedOut(*timeout, *want, what, last, answers, failed, *fresh, began)
		}
		time.Sleep(time.Until(next))
	}
}

// countReady counts the ready workers in doc; with fresh, only those whose
// ready_at is after began.
func countReady(doc httpapi.StatusAnswer, fresh bool, began time.Time) int {
	if !fresh {
		return doc.Ready
	}
	n := 0
	for _, w := range doc.Workers {
		if w.State == "ready" && w.ReadyAt != nil && w.ReadyAt.After(began) {
			n++
		}
	}
	return n
}

// timedOut is the one line a wait that ran out of time ends with: how many
// were ready at the last answer, and why the last ask failed if it did.
func timedOut(timeout time.Duration, want int, what string, last httpapi.StatusAnswer, answers int, failed error, fresh bool, began time.Time) error {
	msg := fmt.Sprintf("timed out after %s", timeout)
	switch {
	case answers == 0:
		return fmt.Errorf("%s: notifyd never answered: %w", msg, failed)
	case fresh:
		msg += fmt.Sprintf(": %d of %d %s ready (%d ready in all)", countReady(last, fresh, began), want, what, last.Ready)
	default:
		msg += fmt.Sprintf(": %d of %d %s ready", countReady(last, fresh, began), want, what)
	}
	if failed != nil {
		return fmt.Errorf("%s when last answered, then: %w", msg, failed)
	}
	return errors.New(msg)
}
