package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var hooksInstalled = regexp.MustCompile(`notifyd hooks installed: (.*)`)

// hookConns is wrk's connections against 2 sync workers: enough to keep
// both busy.
const hookConns = 4

// Goals of the hooks: requests/s with the page hooks against none, and what
// the requests cost notifyd.
const (
	goalHookRatio   = 0.995
	goalHookCPU     = 0.1 // ms per 1,000 requests
	goalHookWakeups = 0.0005
)

// hookInstance is one gunicorn of the comparison, and the notifyd it
// reports to, if any.
type hookInstance struct {
	name string
	env  []string
	nd   *server
	url  string
	runs []float64
	// cpu and wakeups are the notifyd's over the rounds.
	cpu     time.Duration
	wakeups uint64
}

func hookOverhead(ctx context.Context, l *lab, o options) (*section, error) {
	instances := []*hookInstance{
		{name: "page hooks"},
		{name: "datagram hooks", env: []string{"BENCH_NOTIFYD_ACTIVITY=datagrams"}},
		{name: "no hooks (the floor)"},
	}
	var installed string
	for i, in := range instances {
		cmd := exec.Command("gunicorn", "--config", filepath.Join(l.root, seedConfig),
			"--chdir", filepath.Join(l.root, "examples/gunicorn"), "--bind", "127.0.0.1:0",
			"--workers", strconv.Itoa(appWorkers), "--worker-class", "sync", "hello:app")
		// No re-announcement: notifyd hears of the requests alone. The
		// self-healing section measures what re-announcing costs.
		cmd.Env = append(cleanEnv(), "PYTHONDONTWRITEBYTECODE=1", "NOTIFYD_REANNOUNCE=0")
		cmd.Env = append(cmd.Env, in.env...)
		hooked := i < 2
		if hooked {
			nd, err := l.startNotifyd(nil, "--require", strconv.Itoa(appWorkers))
			if err != nil {
				return nil, err
			}
			defer nd.stop()
			in.nd = nd
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
		if hooked {
			if installed, err = g.awaitLog(hooksInstalled); err != nil {
				return nil, err
			}
			if err := awaitAnswer(in.nd.url, fmt.Sprintf("%d workers ready\n", appWorkers)); err != nil {
				return nil, err
			}
		}
		in.url = "http://" + addr + "/"
	}
	for _, in := range instances {
		if err := awaitAnswer(in.url, "hello\n"); err != nil {
			return nil, err
		}
		if _, err := wrk(ctx, in.url, hookConns, time.Second, false); err != nil {
			return nil, err
		}
	}
	// Each notifyd hears only from its own instance: its CPU time and
	// wake-ups over the rounds are what that instance's requests cost it.
	sample := func() ([]time.Duration, []uint64, error) {
		cpus, wakes := make([]time.Duration, len(instances)), make([]uint64, len(instances))
		for i, in := range instances {
			if in.nd == nil {
				continue
			}
			var err error
			if cpus[i], err = cpuTime(in.nd.pid()); err != nil {
				return nil, nil, err
			}
			if wakes[i], err = wakeups(in.nd.pid()); err != nil {
				return nil, nil, err
			}
		}
		return cpus, wakes, nil
	}
	cpu0, wake0, err := sample()
	if err != nil {
		return nil, err
	}
	for range o.rounds {
		for _, in := range instances {
			r, err := wrk(ctx, in.url, hookConns, o.round, false)
			if err != nil {
				return nil, err
			}
			in.runs = append(in.runs, r)
		}
	}
	cpu1, wake1, err := sample()
	if err != nil {
		return nil, err
	}
	for i, in := range instances {
		in.cpu, in.wakeups = cpu1[i]-cpu0[i], wake1[i]-wake0[i]
	}

	page, dgram, floor := instances[0], instances[1], instances[2]
	served := func(in *hookInstance) float64 {
		n := 0.0
		for _, r := range in.runs {
			n += r * o.round.Seconds()
		}
		return n
	}
	perThousand := func(in *hookInstance) float64 {
		return float64(in.cpu) / float64(time.Millisecond) / served(in) * 1000
	}
	perRequest := func(in *hookInstance) float64 { return float64(in.wakeups) / served(in) }
	pageRatio, dgramRatio := paired(page.runs, floor.runs), paired(dgram.runs, floor.runs)

	s := &section{}
	s.p("## What the gunicorn hooks cost a request\n\n")
	s.p("Three gunicorn instances run `hello.py` (`/` answers `hello`) with %d sync workers each: one with the hooks of\n", appWorkers)
	s.p("`notifyd_gunicorn.install()` writing each request into the worker's activity page, one with the same hooks\n")
	s.p("reporting by datagrams (two a request, as where no memfd can be made), each to a notifyd of its own, and one\n")
	s.p("without hooks (the floor). `%s` rotates between them, %d rounds each, after a warm-up;\n", wrkCommand(hookConns, o.round, false), o.rounds)
	s.p("a ratio is the median of the rounds' ratios, each round against the floor's round of the same rotation.\n")
	s.p("Re-announcement is off, so that notifyd hears of the requests alone (the self-healing section measures it).\n")
	s.p("Measured: whatever hooks `install()` installs, in this run **%s**. A wake-up is a voluntary context\n", installed)
	s.p("switch of any of notifyd's threads.\n\n")
	s.p("| instance | median requests/s | / floor | notifyd CPU per 1,000 requests | notifyd wake-ups per request | rounds |\n| --- | ---: | ---: | ---: | ---: | --- |\n")
	s.p("| %s | %.0f | %.3f | %.3f ms | %.4f | %s |\n", page.name, median(page.runs), pageRatio, perThousand(page), perRequest(page), rates(page.runs))
	s.p("| %s | %.0f | %.3f | %.3f ms | %.4f | %s |\n", dgram.name, median(dgram.runs), dgramRatio, perThousand(dgram), perRequest(dgram), rates(dgram.runs))
	s.p("| %s | %.0f | 1 | - | - | %s |\n", floor.name, median(floor.runs), rates(floor.runs))
	s.p("\nnotifyd with the page hooks: %s CPU and %d wake-ups over %.0f requests; with the datagram hooks: %s CPU and %d\n",
		ms(page.cpu), page.wakeups, served(page), ms(dgram.cpu), dgram.wakeups)
	s.p("wake-ups over %.0f requests.\n", served(dgram))
	s.goal(pageRatio >= goalHookRatio, fmt.Sprintf("hook overhead: requests/s with notifyd's page hooks ≥ %g× without", goalHookRatio),
		"%.3f (medians %.0f / %.0f requests/s; the datagram hooks: %.3f)", pageRatio, median(page.runs), median(floor.runs), dgramRatio)
	s.goal(perThousand(page) < goalHookCPU, fmt.Sprintf("hook cost to notifyd: CPU per 1,000 requests < %g ms", goalHookCPU),
		"%.3f ms (the datagram hooks: %.3f ms)", perThousand(page), perThousand(dgram))
	s.goal(perRequest(page) < goalHookWakeups, "hook cost to notifyd: wake-ups per request 0 (< 0.0005)",
		"%.4f (%d over %.0f requests; the datagram hooks: %.3f)", perRequest(page), page.wakeups, served(page), perRequest(dgram))
	return s, nil
}

// wakeups sums the voluntary context switches of every thread of pid: each
// time one of them went to sleep, and so was woken before.
func wakeups(pid int) (uint64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("no threads of pid %d", pid)
	}
	var sum uint64
	for _, path := range tasks {
		v, err := statusField(path, "voluntary_ctxt_switches")
		if err != nil {
			continue // a thread that has just exited
		}
		sum += v
	}
	return sum, nil
}

// statusField reads a number field of a /proc status file.
func statusField(path, field string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if name, value, _ := strings.Cut(line, ":"); name == field {
			return strconv.ParseUint(strings.TrimSpace(value), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s", field, path)
}
