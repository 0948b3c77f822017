package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// Goals the report checks the numbers against.
const (
	goalNotifydP99 = time.Millisecond
	goalBareRatio  = 0.95
)

// report is everything measured, and writes itself as Markdown.
type report struct {
	command    string
	opts       options
	machine    benchkit.Machine
	gomaxprocs int // this process's, which the Go servers under test get too
	tools      tools
	seedServer string
	latency    *latencyResult
	throughput *throughputResult
}

type printer func(format string, args ...any)

func (r *report) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# notifyd saturation benchmark\n\n")
	p("Command: `%s`\n\n", r.command)
	p("Machine: %s; GOMAXPROCS %d\n\n", r.machine, r.gomaxprocs)
	p("Tools: %s, %s; the seed-style server reports itself as `%s`.\n", r.tools.gunicornVersion, r.tools.wrkVersion, r.seedServer)
	goals := []benchkit.Goal{r.writeLatency(p)}
	goals = append(goals, r.writeThroughput(p)...)
	benchkit.WriteGoals(w, goals)
}

func (r *report) writeLatency(p printer) benchkit.Goal {
	res, o := r.latency, r.opts
	p("\n## 1. Health-check latency under saturation\n\n")
	r.writeLatencySetup(p)
	p("| target | what answers | requests | 200 | p50 | p99 | max | errors | timeouts |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, t := range res.targets {
		s := summarize(t.samples)
		p("| %s | %s | %d | %d | %s | %s | %s | %d | %d |\n", t.label, t.what, s.requests, s.ok,
			s.quantile(0.50), s.quantile(0.99), s.quantile(1), s.errors, s.timeouts)
	}
	p("\nQuantiles rank every request, a failed one above every answered one: a quantile that falls on a failure reads ")
	p("\"timed out\" or \"failed\". Errors are failures other than timeouts: refused or reset connections and answers other than 200.")
	for _, t := range res.targets {
		if t.firstErr != "" {
			p(" First error of %s: `%s`.", t.label, t.firstErr)
		}
	}
	p("\n")
	if o.csv != "" {
		p("\nRaw samples: `%s`, one line per request: `seconds,target,latency_ms,outcome`.\n", o.csv)
	}
	return latencyGoal(res.targets[0], res.targets[2], res.targets[3])
}

// writeLatencySetup says how the application was saturated and how the
// endpoints were probed.
func (r *report) writeLatencySetup(p printer) {
	res, o := r.latency, r.opts
	p("gunicorn runs `%s/app.py` with %d sync workers and `%s`, which installs notifyd's hook and the seed-style ", appDir, appWorkers, seedConfig)
	p("health check. The seed-style server counts its own pid files, as the seed did: each worker writes an empty ")
	p("`.gunicorn.worker.<pid>` into the seed's directory in `post_worker_init` and removes it in `worker_exit`; ")
	p("it never reads notifyd's state files. %d clients loop on `%s`, each sending its next request once the answer is in: ", o.sleepers, sleepPath(o.sleep))
	p("with more clients than workers, every worker sleeps and the rest wait in the listen queue. Probing starts once ")
	p("the queue holds %d connections. While probing, the queue (read through netlink `sock_diag` every %s) ", o.sleepers-appWorkers, fmtSetting(queueSampleInterval))
	p("held a median of %s and at most %d connections (limit %d), and %d sleep requests were answered (%d failed).\n\n",
		benchkit.FormatCount(benchkit.Median(res.queued)), slices.Max(res.queued), res.queueLimit, res.slept, res.sleepFails)
	p("Each endpoint is probed every %s for %s, open loop: a request leaves on schedule whether or not the earlier ", fmtSetting(o.interval), fmtSetting(o.duration))
	p("ones have been answered. Every request opens a new connection, as a load balancer's health check does, and has ")
	p("%s for the whole exchange. The %d schedules are offset evenly within the interval. Latency runs from the ", fmtSetting(o.timeout), len(res.targets))
	p("start of the request to the end of the answer's body, as an in-process Go client sees it, on one goroutine ")
	p("per request that dials, writes the request and reads the answer.\n\n")
	p("The reference row involves no health check: the bare server of section 2, a process of its own answering a ")
	p("constant body, probed the same way. It is the floor this machine sets for any endpoint: the TCP handshake, the ")
	p("scheduling of a server process and of the client on shared CPUs, and the client itself.\n\n")
}

// latencyGoal judges notifyd's answers while the application's own route
// fails.
func latencyGoal(app, notifyd, bare *target) benchkit.Goal {
	a, n, b := summarize(app.samples), summarize(notifyd.samples), summarize(bare.samples)
	return benchkit.Goal{
		What: fmt.Sprintf("notifyd p99 < %s with zero errors while (a) times out", benchkit.FormatDuration(goalNotifydP99)),
		Result: fmt.Sprintf("notifyd: p99 %s, %d errors, %d timeouts of %d (reference p99 %s); (a): %d of %d timed out",
			n.quantile(0.99), n.errors, n.timeouts, n.requests, b.quantile(0.99), a.timeouts, a.requests),
		Met: n.requests > 0 && n.failed() == 0 && n.quantileValue(0.99) < goalNotifydP99 && a.timeouts > 0,
	}
}

func (r *report) writeThroughput(p printer) []benchkit.Goal {
	res, o := r.throughput, r.opts
	p("\n## 2. Throughput against the physical limit\n\n")
	r.writeThroughputSetup(p)
	for m, mode := range connModes {
		w := wrkRun{url: "URL", header: mode.header, duration: o.round, connections: o.connections}
		p("%s (`%s`):\n\n", capitalize(mode.label), benchkit.ShellWords(append([]string{"wrk"}, w.args()...)))
		p("| contender | median requests/s | rounds (requests/s) |\n| --- | ---: | --- |\n")
		for _, c := range res.contenders {
			p("| %s | %.0f | %s |\n", c.label, benchkit.Median(c.rates[m]), benchkit.FormatRates(c.rates[m]))
		}
		p("\n")
	}
	notifyd, bare, seed := res.contenders[0], res.contenders[1], res.contenders[2]
	p("| ratio of medians | %s | %s |\n| --- | ---: | ---: |\n", connModes[0].label, connModes[1].label)
	p("| notifyd / bare | %.3f | %.3f |\n", ratioOf(notifyd, bare, 0), ratioOf(notifyd, bare, 1))
	p("| notifyd / seed-style | %s | %s |\n", benchkit.FormatRatio(ratioOf(notifyd, seed, 0)), benchkit.FormatRatio(ratioOf(notifyd, seed, 1)))
	var goals []benchkit.Goal
	for m, mode := range connModes {
		ratio := ratioOf(notifyd, bare, m)
		goals = append(goals, benchkit.Goal{
			What:   fmt.Sprintf("throughput, notifyd / bare >= %.2f, %s", goalBareRatio, mode.label),
			Result: fmt.Sprintf("%.3f (%.0f / %.0f requests/s)", ratio, benchkit.Median(notifyd.rates[m]), benchkit.Median(bare.rates[m])),
			Met:    ratio >= goalBareRatio,
		})
	}
	return goals
}

// writeThroughputSetup says how wrk was run and against what.
func (r *report) writeThroughputSetup(p printer) {
	res, o := r.throughput, r.opts
	warmUp := "without a warm-up"
	if o.warmUp > 0 {
		warmUp = "each mode after a " + benchkit.FormatSeconds(o.warmUp) + " warm-up of every contender"
	}
	p("wrk with 1 thread and %d connections, rounds of %s rotating through the contenders, %d per contender and ", o.connections, benchkit.FormatSeconds(o.round), o.rounds)
	p("mode, %s. Contenders: notifyd's health endpoint; a bare `net/http` ", warmUp)
	p("server, a process of its own (this program's hidden `%s` subcommand), answering every request 200 with ", bareCommand)
	p("a constant %d-byte body and the headers of notifyd's answer, through notifyd's own HTTP server setup (`httpapi.Serve`); and the seed-style ", res.bodyLen)
	p("server of section 1. notifyd and the bare server both run with GOMAXPROCS=%d and GOGC=%s (notifyd's default) ", r.gomaxprocs, serverGOGC)
	p("on the same %d CPUs, which wrk and the idle gunicorn share with them. The seed-style server answers HTTP/1.0 and ", r.machine.CPUs)
	p("closes every connection, so against it both modes open a connection per request. Any socket error or ")
	p("answer other than 2xx fails the run.\n\n")
}

func ratioOf(a, b *contender, mode int) float64 {
	return benchkit.Median(a.rates[mode]) / benchkit.Median(b.rates[mode])
}

// latencySummary is what the report says of one target's samples.
type latencySummary struct {
	requests, ok, errors, timeouts int
	ranked                         []sample // answered 200 by latency, then the failures
}

func summarize(ss []sample) latencySummary {
	s := latencySummary{requests: len(ss), ranked: slices.Clone(ss)}
	for _, x := range ss {
		switch {
		case x.ok():
			s.ok++
		case x.timeout:
			s.timeouts++
		default:
			s.errors++
		}
	}
	slices.SortFunc(s.ranked, func(a, b sample) int {
		if a.ok() != b.ok() {
			if a.ok() {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.latency, b.latency)
	})
	return s
}

func (s latencySummary) failed() int { return s.errors + s.timeouts }

// quantile formats the q quantile: a latency, or what became of the failed
// request it falls on.
func (s latencySummary) quantile(q float64) string {
	x, ok := benchkit.NearestRank(s.ranked, q)
	switch {
	case !ok:
		return "none"
	case x.ok():
		return benchkit.FormatDuration(x.latency)
	case x.timeout:
		return "timed out"
	default:
		return "failed"
	}
}

// quantileValue is the q quantile as a duration, infinite when it falls on a
// failure.
func (s latencySummary) quantileValue(q float64) time.Duration {
	x, ok := benchkit.NearestRank(s.ranked, q)
	if !ok || !x.ok() {
		return time.Duration(math.MaxInt64)
	}
	return x.latency
}

// fmtSetting writes a setting: "20 ms", "1 s", "30 s".
func fmtSetting(d time.Duration) string {
	if d < time.Second {
		return strconv.FormatFloat(benchkit.Millis(d), 'f', -1, 64) + " ms"
	}
	return benchkit.FormatSeconds(d)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
