package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// Goals the report checks the numbers against.
const (
	goalDeathP99   = time.Millisecond
	goalIdleCPU    = 10 * time.Millisecond // per goalIdleWindow
	goalIdleWindow = 60 * time.Second
	goalLoadRatio  = 0.95
	goalRegRatio   = 0.5
)

// report is everything measured, and writes itself as Markdown.
type report struct {
	command      string
	opts         options
	machine      benchkit.Machine
	limits       limits
	workers      int
	capacityNote string
	death        []*detector
	idle         *idleResult
	load         []*loadTarget
	reg          *registrationResult
}

func (r *report) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# notifyd liveness benchmark\n\n")
	p("Command: `%s`\n\n", r.command)
	p("Machine: %s\n\n", r.machine)
	p("Limits: pid_max %d, threads-max %d, RLIMIT_NOFILE %d (hard %d), %d tasks running at start.\n",
		r.limits.pidMax, r.limits.threadsMax, r.limits.nofile, r.limits.nofileMax, r.limits.tasks)
	if r.capacityNote != "" {
		p("\n**Note:** %s.\n", r.capacityNote)
	}
	var goals []benchkit.Goal
	if r.death != nil {
		goals = append(goals, r.writeDeath(p))
	}
	if r.idle != nil {
		goals = append(goals, r.writeIdle(p))
	}
	if r.load != nil {
		goals = append(goals, r.writeLoad(p))
	}
	if r.reg != nil {
		goals = append(goals, r.writeReg(p)...)
	}
	benchkit.WriteGoals(w, goals)
}

type printer func(format string, args ...any)

func (r *report) writeDeath(p printer) benchkit.Goal {
	pidfd, sweep := r.death[0], r.death[1]
	p("\n## 1. Death detection latency\n\n")
	p("Two instances run at once. Each trial starts `sleep 1000`, registers it (`READY=1` and `PID=`, then a barrier), ")
	p("confirms that the health answer is \"1 workers ready\", waits a random 0 to %s so that the kill lands anywhere ", benchkit.FormatSeconds(sweepInterval))
	p("in the sweep's cycle, then sends SIGKILL. The benchmark holds a pidfd of its own for the child and sleeps on it ")
	p("until the child is a zombie, the earliest moment any exit detection can see the exit; only then does it poll the ")
	p("health endpoint, over one keep-alive connection, until the answer is \"0 workers ready\". A poll loop started at ")
	p("the kill would compete with the dying process for the CPUs and delay the exit it times. Latency is the time from ")
	p("just before the kill to that answer: an upper bound, since the answer may have changed before the request that saw ")
	p("it was sent. The child is reaped after each measurement, so the worker is a zombie when notifyd drops it. ")
	p("Trials alternate between the two instances.\n\n")
	p("| exit detection | flags | trials | median | p90 | p99 | max |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	row := func(label, flags string, l []time.Duration) {
		p("| %s | %s | %d | %s | %s | %s | %s |\n", label, flags, len(l),
			benchkit.FormatDuration(medianDur(l)), benchkit.FormatDuration(rankDur(l, 0.90)), benchkit.FormatDuration(rankDur(l, 0.99)), benchkit.FormatDuration(slices.Max(l)))
	}
	for _, det := range r.death {
		row(det.label, "`"+strings.Join(det.d.flags, " ")+"`", det.latencies)
	}
	p("\nWhere the pidfd instance's time goes, trial by trial:\n\n")
	p("| part | trials | median | p90 | p99 | max |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	after := make([]time.Duration, len(pidfd.latencies))
	for i, l := range pidfd.latencies {
		after[i] = l - pidfd.zombies[i]
	}
	part := func(label string, l []time.Duration) {
		p("| %s | %d | %s | %s | %s | %s |\n", label, len(l),
			benchkit.FormatDuration(medianDur(l)), benchkit.FormatDuration(rankDur(l, 0.90)), benchkit.FormatDuration(rankDur(l, 0.99)), benchkit.FormatDuration(slices.Max(l)))
	}
	part("SIGKILL to zombie (the kernel)", pidfd.zombies)
	part("zombie to the answer without the worker (notifyd, and the request that saw it)", after)
	ratio := float64(medianDur(sweep.latencies)) / float64(medianDur(pidfd.latencies))
	p("\nRatio of medians, sweep / pidfd: %s.\n\n", benchkit.FormatRatio(ratio))
	p("Resolution: one health request in the poll loop takes a median of %s against the pidfd instance and %s ",
		benchkit.FormatDuration(medianDur(pidfd.requests)), benchkit.FormatDuration(medianDur(sweep.requests)))
	p("against the sweep instance (medians of %s and %s requests per trial).\n",
		benchkit.FormatCount(benchkit.Median(pidfd.polls)), benchkit.FormatCount(benchkit.Median(sweep.polls)))
	p99 := rankDur(pidfd.latencies, 0.99)
	return benchkit.Goal{
		What: fmt.Sprintf("pidfd death detection p99 < %s (sweep median %s)", benchkit.FormatDuration(goalDeathP99), benchkit.FormatDuration(medianDur(sweep.latencies))),
		Result: fmt.Sprintf("p99 %s, of which the kernel's SIGKILL to zombie p99 is %s and notifyd's zombie to answer p99 %s",
			benchkit.FormatDuration(p99), benchkit.FormatDuration(rankDur(pidfd.zombies, 0.99)), benchkit.FormatDuration(rankDur(after, 0.99))),
		Met: p99 < goalDeathP99,
	}
}

func (r *report) writeIdle(p printer) benchkit.Goal {
	res := r.idle
	p("\n## 2. Idle CPU\n\n")
	p("Two instances hold the same %d registered `sleep` children, with no traffic, through the same %s window, ", res.workers, benchkit.FormatSeconds(res.window))
	p("which starts %s after the last registration. CPU time is the first field of `/proc/<pid>/task/*/schedstat` ", benchkit.FormatSeconds(idleSettle))
	p("summed over notifyd's threads; wake-ups are `voluntary_ctxt_switches` plus `nonvoluntary_ctxt_switches` ")
	p("from `/proc/<pid>/task/*/status`.\n\n")
	p("| exit detection | flags | workers | window | CPU time | context switches | threads (start, end) |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, m := range res.modes {
		p("| %s | `%s` | %d | %s | %.3f ms | %d | %d, %d |\n", m.label, strings.Join(m.flags, " "), res.workers, benchkit.FormatSeconds(res.window),
			benchkit.Millis(m.cpu), m.switches, m.threadsBefore, m.threadsAfter)
	}
	pidfd, sweep := res.modes[0], res.modes[1]
	if pidfd.cpu > 0 {
		p("\nRatio of CPU time, sweep / pidfd: %s.\n", benchkit.FormatRatio(float64(sweep.cpu)/float64(pidfd.cpu)))
	}
	limit := time.Duration(float64(goalIdleCPU) * res.window.Seconds() / goalIdleWindow.Seconds())
	what := fmt.Sprintf("pidfd idle CPU < %.0f ms per %s with %d workers", benchkit.Millis(goalIdleCPU), benchkit.FormatSeconds(goalIdleWindow), res.workers)
	if res.window != goalIdleWindow {
		what += fmt.Sprintf(" (%.2f ms for this %s window)", benchkit.Millis(limit), benchkit.FormatSeconds(res.window))
	}
	return benchkit.Goal{
		What:   what,
		Result: fmt.Sprintf("%.3f ms, %d context switches (sweep: %.1f ms, %d)", benchkit.Millis(pidfd.cpu), pidfd.switches, benchkit.Millis(sweep.cpu), sweep.switches),
		Met:    pidfd.cpu < limit,
	}
}

func (r *report) writeLoad(p printer) benchkit.Goal {
	x, y := r.load[0], r.load[1]
	p("\n## 3. Health throughput with many workers\n\n")
	p("Instance X holds %d registered `sleep` children, instance Y holds 1; both run with `%s`. ", x.workers, strings.Join(x.d.flags, " "))
	p("The load is an in-process Go HTTP client with %d concurrent keep-alive connections, each sending its next ", loadConns)
	p("request as soon as the answer is in, and checking its status and body; rounds of %s alternate between X and Y, ", benchkit.FormatSeconds(loadRound))
	p("%d each, after a %s warm-up of each.\n\n", loadRounds, benchkit.FormatSeconds(loadWarmUp))
	p("| instance | registered workers | median requests/s | rounds (requests/s) | connections opened | RSS after the rounds | peak RSS |\n")
	p("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n")
	for _, t := range r.load {
		p("| %s | %d | %.0f | %s | %d | %s | %s |\n", t.label, t.workers, benchkit.Median(t.rates), benchkit.FormatRates(t.rates), t.dials.Load(), fmtMiB(t.mem.rssKiB), fmtMiB(t.mem.peakKiB))
	}
	ratio := benchkit.Median(x.rates) / benchkit.Median(y.rates)
	p("\nRatio of medians, X / Y: %.3f. ", ratio)
	p("Memory is `VmRSS` and `VmHWM` of `/proc/<pid>/status`, read after the last round: ")
	p("the resident sets of X and Y differ by %s. ", fmtMiB(absDiff(x.mem.rssKiB, y.mem.rssKiB)))
	p("Both are mostly the Go runtime and the garbage of the health load, which GOGC=400 lets grow to five times the live heap.\n")
	return benchkit.Goal{
		What:   fmt.Sprintf("health throughput with %d workers / with 1 >= %.2f", x.workers, goalLoadRatio),
		Result: fmt.Sprintf("%.3f (%.0f / %.0f requests/s)", ratio, benchkit.Median(x.rates), benchkit.Median(y.rates)),
		Met:    ratio >= goalLoadRatio,
	}
}

func (r *report) writeReg(p printer) []benchkit.Goal {
	res := r.reg
	p("\n## 4. Registration rate\n\n")
	p("%d live `sleep` children. A notifyd round sends `READY=1` and `PID=` for each of them on one client socket, ", res.workers)
	p("then a barrier, and is timed from the first send to the barrier's acknowledgement; every message ends in a state ")
	p("file, and all %d are checked to exist afterwards. `STOPPING=1` for all of them and a barrier then clear the ", res.workers)
	p("registry, untimed. A plain round is a Go loop writing the same %d names in another directory on the same ", res.workers)
	p("file system: open `<name>.tmp` with `O_CREAT|O_TRUNC|O_WRONLY`, write %d bytes, close, rename to `<name>`; ", len(plainBody))
	p("the files are removed afterwards, untimed. %d rounds of each, alternating. ", regRounds)
	p("It runs on the file system of `$TMPDIR` (else `/tmp`) and, when that is not tmpfs, once more on tmpfs in `%s`: ", sharedMemory)
	p("notifyd's default state directory, `$RUNTIME_DIRECTORY` under `/run`, is on tmpfs on a systemd host.\n\n")
	p("The notify socket queues at most `net.unix.max_dgram_qlen` datagrams, %d on this machine when notifyd made its sockets ", res.dgramQlen)
	p("(systemd raises it to at least 512 when it boots the machine); a client that sends faster than notifyd reads waits for room.\n")
	var goals []benchkit.Goal
	for _, run := range res.runs {
		p("\n### On %s (`%s`)\n\n", run.fsType, run.dir)
		p("| writer | median files/s | rounds (files/s) |\n")
		p("| --- | ---: | --- |\n")
		p("| notifyd (`READY=1` to state file) | %.0f | %s |\n", benchkit.Median(run.notifyd), benchkit.FormatRates(run.notifyd))
		p("| plain loop | %.0f | %s |\n", benchkit.Median(run.plain), benchkit.FormatRates(run.plain))
		ratio := benchkit.Median(run.notifyd) / benchkit.Median(run.plain)
		paired := make([]float64, len(run.notifyd))
		for i := range paired {
			paired[i] = run.notifyd[i] / run.plain[i]
		}
		p("\nRatio of medians, notifyd / plain: %.3f. ", ratio)
		p("Round by round, each notifyd round against the plain round right after it: median %.3f, from %.3f to %.3f.\n",
			benchkit.Median(paired), slices.Min(paired), slices.Max(paired))
		goals = append(goals, benchkit.Goal{
			What:   fmt.Sprintf("registration rate on %s, notifyd / plain loop >= %.1f", run.fsType, goalRegRatio),
			Result: fmt.Sprintf("%.3f (%.0f / %.0f files/s)", ratio, benchkit.Median(run.notifyd), benchkit.Median(run.plain)),
			Met:    ratio >= goalRegRatio,
		})
	}
	return goals
}

// medianDur is the median of durations.
func medianDur(xs []time.Duration) time.Duration { return time.Duration(benchkit.Median(xs)) }

// rankDur is the nearest-rank q quantile of durations, 0 for none.
func rankDur(xs []time.Duration, q float64) time.Duration {
	d, _ := benchkit.NearestRank(slices.Sorted(slices.Values(xs)), q)
	return d
}

func absDiff(a, b uint64) uint64 { return max(a, b) - min(a, b) }

// fmtMiB writes a size given in KiB as MiB.
func fmtMiB(kib uint64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
