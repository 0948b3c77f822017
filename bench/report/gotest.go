package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/httpapi"
)

// goTest runs go test with args in the repository and returns its output.
func goTest(ctx context.Context, l *lab, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"test"}, args...)...)
	cmd.Dir = l.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go test %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// benchMetric reads the value of unit from the benchmark lines of out.
func benchMetric(out, unit string) (float64, error) {
	m := regexp.MustCompile(`\s([0-9.]+) ` + regexp.QuoteMeta(unit) + `(\s|$)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no %s in:\n%s", unit, out)
	}
	return strconv.ParseFloat(m[1], 64)
}

func deathDetection(ctx context.Context, l *lab, o options) (*section, error) {
	args := []string{"-run", "^$", "-bench", "^BenchmarkExitDetection$", "-benchtime", fmt.Sprintf("%dx", o.deaths), "./registry"}
	out, err := goTest(ctx, l, args...)
	if err != nil {
		return nil, err
	}
	v := map[string]time.Duration{}
	for _, unit := range []string{"kernel-p50-ns", "kernel-p99-ns", "notifyd-p50-ns", "notifyd-p99-ns"} {
		ns, err := benchMetric(out, unit)
		if err != nil {
			return nil, err
		}
		v[unit] = time.Duration(ns)
	}
	first, err := benchMetric(out, "registry-first-%")
	if err != nil {
		return nil, err
	}
	s := &section{}
	s.p("## Death detection\n\n")
	s.p("How soon a worker that died stops counting, in two parts: the kernel's, from SIGKILL until the process is a\n")
	s.p("zombie, the earliest moment any exit detection can see it; and notifyd's, from the zombie until the registry\n")
	s.p("publishes the summary every health answer reads. `BenchmarkExitDetection` (`registry`) measures both in\n")
	s.p("process, without an HTTP request in the way, over %d trials, each on a fresh `sleep` child.\n\n", o.deaths)
	s.p("Command: `go test %s`\n\n", strings.Join(quoteArgs(args), " "))
	s.p("| part | median | p99 |\n| --- | ---: | ---: |\n")
	s.p("| SIGKILL to zombie (the kernel, the floor) | %s | %s |\n", ms(v["kernel-p50-ns"]), ms(v["kernel-p99-ns"]))
	s.p("| zombie to the registry's change (notifyd) | %s | %s |\n", ms(v["notifyd-p50-ns"]), ms(v["notifyd-p99-ns"]))
	s.p("\nThe benchmark learns of the zombie from a pidfd of its own, and notifyd from its pidfd in an epoll loop, at the\n")
	s.p("same moment; in %.0f%% of the trials notifyd had already published the change when the benchmark woke, which\n", first)
	s.p("counts as zero. What is left is one wake-up of notifyd's epoll thread, a map lookup and an atomic store.\n")
	s.goal(v["notifyd-p50-ns"] < 200*time.Microsecond && v["notifyd-p99-ns"] < time.Millisecond,
		"death detection, zombie to the registry's change: median < 0.2 ms, p99 < 1 ms",
		"median %s, p99 %s (the kernel's SIGKILL to zombie: median %s, p99 %s)",
		ms(v["notifyd-p50-ns"]), ms(v["notifyd-p99-ns"]), ms(v["kernel-p50-ns"]), ms(v["kernel-p99-ns"]))
	return s, nil
}

func micro(ctx context.Context, l *lab, o options) (*section, error) {
	args := []string{"-run", "^$", "-bench", "^(BenchmarkHealth|BenchmarkSummary)$", "-benchmem", "-count", "1", "./httpapi", "./registry"}
	out, err := goTest(ctx, l, args...)
	if err != nil {
		return nil, err
	}
	s := &section{}
	s.p("## Micro-benchmarks\n\n")
	s.p("What one health answer costs notifyd: `BenchmarkHealth/handler` is the handler alone, `BenchmarkHealth/http`\n")
	s.p("a keep-alive request over loopback from a client that allocates nothing, so that its allocations are the\n")
	s.p("server's (net/http's own); `BenchmarkSummary` is the registry read behind every answer, with 1 and 200 workers.\n\n")
	s.p("Command: `go test %s`\n\n```\n", strings.Join(quoteArgs(args), " "))
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "Benchmark") {
			s.p("%s", strings.Join(strings.Fields(line), " ")+"\n")
		}
	}
	s.p("```\n")
	return s, nil
}

func badClients(ctx context.Context, l *lab, o options) (*section, error) {
	args := []string{"-count=1", "-run", "^TestFaultIdleAndSlowHealthClients$", "-v", "./e2e"}
	out, err := goTest(ctx, l, args...)
	if err != nil {
		return nil, err
	}
	s := &section{}
	s.p("## Health under 400 bad clients\n\n")
	s.p("`TestFaultIdleAndSlowHealthClients` holds 200 idle TCP connections and 200 that send their headers one byte a\n")
	s.p("second against notifyd (fewer than its cap of %d connections, so it holds them all until its timeouts cut\n", httpapi.MaxConns)
	s.p("them off; the connection cap section has 5000), then makes 200 health checks, each on a new connection, from the test's Go client\n")
	s.p("(built with `-race`) and 20 with curl (process start included). It asserts that every check is answered 200\n")
	s.p("and that notifyd cuts the bad clients off by itself; it logs the latencies:\n\n")
	s.p("Command: `go test %s`\n\n```\n", strings.Join(quoteArgs(args), " "))
	re := regexp.MustCompile(`(?m)^\s+fault_test\.go:\d+: (.*)$`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		s.p("%s\n", m[1])
	}
	s.p("```\n")
	return s, nil
}

// quoteArgs quotes the arguments a shell would read otherwise.
func quoteArgs(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = a
		if strings.ContainsAny(a, "^$|()*? ") {
			q[i] = "'" + a + "'"
		}
	}
	return q
}

// reannounceLine is what TestReannounceCost logs of its measurement.
var reannounceLine = regexp.MustCompile(`(\d+) re-announcements in (\S+): (\d+) wake-ups \(([0-9.]+) a second\), (\S+) CPU time`)

// reannounceCost reports what self-healing costs an otherwise idle
// notifyd: 200 workers repeating READY=1 every 10 s, as the gunicorn module
// does, measured by the e2e test that also checks it writes no file.
func reannounceCost(ctx context.Context, l *lab, o options) (*section, error) {
	args := []string{"-count=1", "-run", "^TestReannounceCost$", "-v", "./e2e"}
	out, err := goTest(ctx, l, args...)
	if err != nil {
		return nil, err
	}
	m := reannounceLine.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("no measurement in:\n%s", out)
	}
	s := &section{}
	s.p("## What self-healing costs an idle notifyd\n\n")
	s.p("Each gunicorn worker repeats its `READY=1` every 10 s so that a restarted notifyd learns it again. A plain build\n")
	s.p("of notifyd holds 200 `sleep` workers; the test repeats each one's `READY=1` once in %s, evenly spread, and counts\n", m[2])
	s.p("notifyd's wake-ups (voluntary context switches of all its threads) and CPU time. Workers that do not repeat\n")
	s.p("themselves cost nothing while idle: see the idle CPU of the footprint section.\n\n")
	s.p("Command: `go test %s`\n\n", strings.Join(quoteArgs(args), " "))
	s.p("| load | wake-ups | CPU time |\n| --- | ---: | ---: |\n")
	s.p("| %s re-announcements in %s | %s (%s a second) | %s |\n", m[1], m[2], m[3], m[4], m[5])
	s.p("\n")
	s.p("Each datagram wakes the thread that reads it about once; the Go runtime's system monitor, asleep while the\n")
	s.p("process is idle, adds two or so as it notices the activity and goes back to sleep. No repetition writes a file.\n")
	return s, nil
}
