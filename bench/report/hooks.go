package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
)

var hooksInstalled = regexp.MustCompile(`notifyd hooks installed: (.*)`)

// hookConns is wrk's connections against 2 sync workers: enough to keep
// both busy.
const hookConns = 4

func hookOverhead(ctx context.Context, l *lab, o options) (*section, error) {
	nd, err := l.startNotifyd(nil, "--require", strconv.Itoa(appWorkers))
	if err != nil {
		return nil, err
	}
	defer nd.stop()
	var urls []string
	var apps []int
	var installed string
	for _, withHooks := range []bool{true, false} {
		cmd := exec.Command("gunicorn", "--config", filepath.Join(l.root, seedConfig),
			"--chdir", filepath.Join(l.root, "examples/gunicorn"), "--bind", "127.0.0.1:0",
			"--workers", strconv.Itoa(appWorkers), "--worker-class", "sync", "hello:app")
		cmd.Env = append(cleanEnv(), "PYTHONDONTWRITEBYTECODE=1")
		if withHooks {
			cmd.Env = append(cmd.Env, "NOTIFYD_SOCKET="+nd.socket)
		}
		g, err := l.start(cmd, syscall.SIGTERM, "")
		if err != nil {
			return nil, err
		}
		defer g.stop()
		addr, err := g.awaitLog(gunicornListens)
		if err != nil {
			return nil, err
		}
		if withHooks {
			if installed, err = g.awaitLog(hooksInstalled); err != nil {
				return nil, err
			}
			if err := awaitAnswer(nd.url, fmt.Sprintf("%d workers ready\n", appWorkers)); err != nil {
				return nil, err
			}
		}
		urls = append(urls, "http://"+addr+"/")
		apps = append(apps, g.pid())
	}
	for _, u := range urls {
		if err := awaitAnswer(u, "hello\n"); err != nil {
			return nil, err
		}
	}
	r, err := alternate(ctx, nd.pid(), [2]string(urls), [2]int(apps), hookConns, o)
	if err != nil {
		return nil, err
	}
	hooked, perThousand := r.served, r.perThousand
	runs := [][]float64{r.with, r.without}
	with, without := median(r.with), median(r.without)
	ratio := paired(r.with, r.without)
	s := &section{}
	s.p("## What the gunicorn hooks cost a request\n\n")
	s.p("Two gunicorn instances run `hello.py` (`/` answers `hello`) with %d sync workers each, one with the hooks of\n", appWorkers)
	s.p("`notifyd_gunicorn.install()` reporting to a notifyd, one without (the floor); `%s` alternates between them,\n", wrkCommand(hookConns, o.round, false))
	s.p("%d rounds each, after a warm-up; the ratio is the median of the rounds' ratios, each round with the hooks\n", o.rounds)
	s.p("against the round without right after it. Measured: whatever hooks `install()` installs, in this run **%s**.\n\n", installed)
	s.p("| instance | median requests/s | rounds |\n| --- | ---: | --- |\n")
	s.p("| with notifyd's hooks | %.0f | %s |\n| without (the floor) | %.0f | %s |\n", with, rates(runs[0]), without, rates(runs[1]))
	s.p("\nnotifyd's CPU time over the rounds with the hooks, %.0f requests in all: %.1f ms per 1,000 requests.\n", hooked, perThousand)
	s.p("gunicorn's CPU time (master and workers) per request: %s with the hooks, %s without; the hooks add %s.\n",
		µs(r.cpuWith), µs(r.cpuWithout), µs(r.cpuWith-r.cpuWithout))
	s.goal(ratio >= 0.98, "hook overhead: requests/s with notifyd's hooks ≥ 0.98× without",
		"%.3f (medians %.0f / %.0f requests/s; notifyd %.1f ms CPU per 1,000 requests; hooks: %s)", ratio, with, without, perThousand, installed)
	return s, nil
}
