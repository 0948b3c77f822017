// Command report measures what notifyd's users ask about, against this
// machine's own floor, and writes docs/PERFORMANCE.md:
//
//   - health checks while every gunicorn worker is busy, against a bare
//     HTTP server (the floor) and the seed-style health check;
//   - health throughput against the bare server, keep-alive and with a new
//     connection per request;
//   - memory: peak resident set through a burst of health checks, and with
//     10000 workers holding activity pages;
//   - death detection, the kernel's part and notifyd's;
//   - boot to healthy with 64 gunicorn workers, against the seed-style
//     server counting its own pid files;
//   - idle CPU with 10000 workers;
//   - what notifyd's gunicorn hooks cost each request, with the activity
//     page and with datagrams, and what the requests cost notifyd;
//   - what notifyd.asgi's middleware costs each request under uvicorn;
//   - what the workers' re-announcement costs an idle notifyd;
//   - health under 400 bad clients;
//   - queue time: notifyd's oldest age against the clients' own wait, as
//     wrk ramps gunicorn past saturation, and notifyd's CPU then and idle;
//   - what the cap on HTTP connections costs and buys.
//
// Each goal is a ratio or a median of contenders run side by side in one
// run, alternating, so that the other work of a shared machine weighs on
// all of them alike. bench/run runs it and draws the chart:
//
//	go run ./bench/report -out DIR [-quick]
//
// writes DIR/PERFORMANCE.md, DIR/saturation.csv and DIR/queue-time.csv. It needs gunicorn,
// uvicorn and wrk, and stops everything it started on every path out, SIGINT included.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the run's settings: full, or brief with -quick to check the
// machinery.
type options struct {
	quick    bool
	rounds   int           // per contender, in every side-by-side comparison
	round    time.Duration // one wrk round
	probe    time.Duration // probing under saturation
	burst    time.Duration // the health burst of the footprint
	idle     time.Duration // the idle window
	many     int           // workers of the footprint and idle measurements
	boots    int           // gunicorn boots per contender
	deaths   int           // death detection trials
	bootSize int           // gunicorn workers per boot
	only     []string      // the sections to run; every one when empty
	baseline string        // a git revision whose notifyd the connection cap section measures too
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var items []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

func main() {
	out := flag.String("out", "docs", "directory for PERFORMANCE.md and saturation.csv")
	quick := flag.Bool("quick", false, "every measurement briefly, to check the machinery")
	only := flag.String("only", "", "comma-separated `sections` to run (such as \"hook overhead,throughput\"); all when empty")
	baseline := flag.String("baseline", "", "a git `revision` (such as main) whose notifyd the connection cap section measures beside this one")
	flag.Parse()
	o := options{rounds: 15, round: time.Second, probe: 30 * time.Second, burst: 5 * time.Second,
		idle: 60 * time.Second, many: 10000, boots: 5, deaths: 500, bootSize: 64}
	if *quick {
		o = options{quick: true, rounds: 1, round: time.Second, probe: 3 * time.Second, burst: time.Second,
			idle: 2 * time.Second, many: 200, boots: 1, deaths: 20, bootSize: 4}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	o.only, o.baseline = splitList(*only), *baseline
	err := run(ctx, *out, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/report:", err)
		os.Exit(1)
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/report: "+format+"\n", args...)
}

// goal is one row of the table of goals.
type goal struct {
	what, result string
	met          bool
}

// section is one part of the report: its Markdown and its goals.
type section struct {
	text  strings.Builder
	goals []goal
}

func (s *section) p(format string, args ...any) { fmt.Fprintf(&s.text, format, args...) }

func (s *section) goal(met bool, what, format string, args ...any) {
	s.goals = append(s.goals, goal{what: what, result: fmt.Sprintf(format, args...), met: met})
}

func run(ctx context.Context, out string, o options) error {
	started := time.Now()
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(root)), "go.mod") {
		return fmt.Errorf("run from the notifyd repository: go env GOMOD: %v", err)
	}
	for _, tool := range []string{"wrk", "gunicorn"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found on PATH (on Debian: apt-get install %s)", tool, tool)
		}
	}
	l, err := newLab(ctx, filepath.Dir(strings.TrimSpace(string(root))))
	if err != nil {
		return err
	}
	defer l.close()
	csv := filepath.Join(out, "saturation.csv")
	type step struct {
		name string
		fn   func(context.Context, *lab, options) (*section, error)
	}
	steps := []step{
		{"saturation", func(ctx context.Context, l *lab, o options) (*section, error) { return saturation(ctx, l, o, csv) }},
		{"throughput", throughput},
		{"footprint and idle CPU", memoryFootprint},
		{"activity pages at scale", activityPages},
		{"death detection", deathDetection},
		{"boot to healthy", boot},
		{"hook overhead", hookOverhead},
		{"ASGI middleware overhead", asgiOverhead},
		{"self-healing's cost", reannounceCost},
		{"health under bad clients", badClients},
		{"connection cap", connectionCap},
		{"micro-benchmarks", micro},
		{"queue time", func(ctx context.Context, l *lab, o options) (*section, error) {
			return queueTime(ctx, l, o, filepath.Join(out, "queue-time.csv"))
		}},
	}
	for _, name := range o.only {
		if !slices.ContainsFunc(steps, func(st step) bool { return st.name == name }) {
			return fmt.Errorf("-only %q: no such section", name)
		}
	}
	var sections []*section
	for _, st := range steps {
		if len(o.only) > 0 && !slices.Contains(o.only, st.name) {
			continue
		}
		progress("%s", st.name)
		s, err := st.fn(ctx, l, o)
		if ctx.Err() != nil {
			return fmt.Errorf("%s: interrupted", st.name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		sections = append(sections, s)
	}
	return writeReport(filepath.Join(out, "PERFORMANCE.md"), o, started, sections)
}

func writeReport(path string, o options, started time.Time, sections []*section) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	cmd := "bench/run"
	if o.quick {
		cmd += " --quick"
	}
	p("# Performance\n\n")
	p("Every figure here was measured by `%s` (`bench/report`), which ran for %d minutes, finishing %s, on %s.\n\n",
		cmd, int(time.Since(started).Round(time.Minute)/time.Minute), time.Now().UTC().Format("2006-01-02 15:04 MST"), machine())
	p("Each goal is stated against this machine's own floor: a bare HTTP server, the kernel, or the\n")
	p("seed-style health check, run side by side with notifyd in the same run, alternating. On a shared\n")
	p("virtual machine absolute numbers move by a factor of two from one run to the next; the ratios\n")
	p("and medians of one run are what to read. Run it again on your own machine.\n\n")
	p("## Goals\n\n| goal | result | verdict |\n| --- | --- | --- |\n")
	for _, s := range sections {
		for _, g := range s.goals {
			verdict := "**not met**"
			if g.met {
				verdict = "met"
			}
			p("| %s | %s | %s |\n", g.what, g.result, verdict)
		}
	}
	for _, s := range sections {
		p("\n%s", s.text.String())
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// machine names the machine: kernel, CPUs, CPU model, Go.
func machine() string {
	var u syscall.Utsname
	syscall.Uname(&u)
	release := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		release = append(release, byte(c))
	}
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("Linux %s, %d CPUs, %s, %s", release, runtime.NumCPU(), cpu, runtime.Version())
}

// median is the median of xs, the mean of the middle two for an even count.
func median[T ~int64 | ~float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// paired is the median of a[i]/b[i]: each round of a contender against the
// round of its floor that came right after it, so that a change in the
// machine's other load between rounds weighs on both sides of a ratio.
func paired(a, b []float64) float64 {
	rs := make([]float64, len(a))
	for i := range a {
		rs[i] = a[i] / b[i]
	}
	return median(rs)
}

// ms writes a duration in milliseconds, with a precision that suits it.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f ms", v)
	case v < 100:
		return fmt.Sprintf("%.2f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// rates writes every round's rate, in the order measured.
func rates(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.0f", r)
	}
	return strings.Join(parts, ", ")
}
