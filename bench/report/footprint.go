package main

import (
	"context"
	"fmt"
	"time"

	"github.com/notifyd/notifyd/internal/footprint"
)

// MiB goals of the footprint, and the idle CPU goal per minute.
const (
	goalPeak      = 16.0
	goalPeakMany  = 20.0
	goalIdleCPU   = 10 * time.Millisecond
	footprintRuns = 3
)

// setting is one runtime setting under test: what the environment adds.
type setting struct {
	name string
	env  []string
	bare bool
}

func memoryFootprint(ctx context.Context, l *lab, o options) (*section, error) {
	ws, err := startWorkers(1)
	if err != nil {
		return nil, err
	}
	defer ws.stop()
	settings := []setting{
		{name: fmt.Sprintf("notifyd, default (GOGC=%d)", footprint.GCPercent)},
		{name: "bare server, the same settings (the floor)", bare: true},
		{name: "notifyd, `GOGC=100`", env: []string{"GOGC=100"}},
		{name: "notifyd, `GOGC=400`", env: []string{"GOGC=400"}},
	}
	start, peak, rate := make([][]float64, len(settings)), make([][]float64, len(settings)), make([][]float64, len(settings))
	for range min(o.rounds, footprintRuns) {
		for i, st := range settings {
			a, b, r, err := burst(ctx, l, st, ws, o.burst)
			if err != nil {
				return nil, err
			}
			start[i], peak[i], rate[i] = append(start[i], a), append(peak[i], b), append(rate[i], r)
		}
	}

	s := &section{}
	s.p("## Footprint\n\n")
	s.p("notifyd runs beside every instance of an application, so its memory is multiplied by the fleet, while a load\n")
	s.p("balancer probes it a few times a second. Each row is a fresh process, built as the wheel builds it\n")
	s.p("(`CGO_ENABLED=0`), holding 1 registered worker, then loaded by `%s` (%s); %d rounds, rotating. Resident\n", wrkCommand(throughputConns, o.burst, false), o.burst, min(o.rounds, footprintRuns))
	s.p("memory is `VmRSS` before the burst and `VmHWM`, the peak, after it, from `/proc/<pid>/status`; it includes the\n")
	s.p("program text, about 10 MiB of it, which this machine's kernel keeps resident whole.\n\n")
	s.p("| runtime setting | resident at start | peak through the burst | requests/s in the burst |\n| --- | ---: | ---: | ---: |\n")
	for i, st := range settings {
		s.p("| %s | %.1f MiB | %.1f MiB | %.0f |\n", st.name, median(start[i]), median(peak[i]), median(rate[i]))
	}
	s.goal(median(peak[0]) <= goalPeak, fmt.Sprintf("footprint: peak resident through the burst ≤ %.0f MiB, default settings", goalPeak),
		"%.1f MiB (floor %.1f MiB; `GOGC=400`, the former default: %.1f MiB)", median(peak[0]), median(peak[1]), median(peak[3]))

	// Many workers: the live heap grows, and idle CPU must not.
	many, err := startWorkers(o.many)
	if err != nil {
		return nil, err
	}
	defer many.stop()
	nd, err := l.startNotifyd(nil)
	if err != nil {
		return nil, err
	}
	defer nd.stop()
	old, err := l.startNotifyd([]string{"GOGC=400"})
	if err != nil {
		return nil, err
	}
	defer old.stop()
	bare, err := l.startBare()
	if err != nil {
		return nil, err
	}
	defer bare.stop()
	progress("registering %d workers", o.many)
	for _, sv := range []*server{nd, old} {
		if err := many.register(sv); err != nil {
			return nil, err
		}
	}
	time.Sleep(3 * time.Second)
	progress("idle for %s", o.idle)
	cpu0, err := cpuTimes(nd.pid(), bare.pid())
	if err != nil {
		return nil, err
	}
	time.Sleep(o.idle)
	cpu1, err := cpuTimes(nd.pid(), bare.pid())
	if err != nil {
		return nil, err
	}
	idleND, idleBare := cpu1[0]-cpu0[0], cpu1[1]-cpu0[1]
	s.p("\nWith %d registered `sleep` workers: two notifyd instances, one with the default and one with `GOGC=400`, hold\n", o.many)
	s.p("the same workers. The peak includes their registration, and the burst comes after the idle window below:\n\n")
	s.p("| runtime setting | resident before the burst | peak | requests/s in the burst |\n| --- | ---: | ---: | ---: |\n")
	var peaks []float64
	for _, sv := range []struct {
		name string
		s    *server
	}{{settings[0].name, nd}, {settings[3].name, old}} {
		rss, err := memory(sv.s.pid(), "VmRSS")
		if err != nil {
			return nil, err
		}
		r, err := wrk(ctx, sv.s.url, throughputConns, o.burst, false)
		if err != nil {
			return nil, err
		}
		hwm, err := memory(sv.s.pid(), "VmHWM")
		if err != nil {
			return nil, err
		}
		// The kernel updates VmHWM from counters it batches, so that right
		// after a quiet spell it can read a little below VmRSS.
		hwm = max(hwm, rss)
		peaks = append(peaks, hwm)
		s.p("| %s | %.1f MiB | %.1f MiB | %.0f |\n", sv.name, rss, hwm, r)
	}
	s.goal(peaks[0] <= goalPeakMany, fmt.Sprintf("footprint: peak resident ≤ %.0f MiB with %d workers, default settings", goalPeakMany, o.many),
		"%.1f MiB (`GOGC=400`: %.1f MiB)", peaks[0], peaks[1])

	s.p("\nThe health answer itself allocates nothing: it is made once per count of ready workers and shared\n")
	s.p("(`BenchmarkHealth` in `httpapi`, below). net/http still allocates about 2 KB per request it reads, and\n")
	s.p("`GOGC` decides how much of that garbage may pile up before a collection. An operator who wants more health\n")
	s.p("checks a second than any load balancer sends can trade memory for them with the environment: `GOGC=400`\n")
	s.p("gives the rows above; `GOMEMLIMIT` caps the Go runtime's own memory, but near that cap the collector runs\n")
	s.p("without pause, and the live heap grows with the workers registered.\n")

	perMinute := func(d time.Duration) time.Duration { return d * time.Minute / o.idle }
	s.p("\n## Idle CPU\n\n")
	s.p("The CPU time notifyd's threads ran (`/proc/<pid>/task/*/schedstat`) over %s with no traffic, holding %d\n", o.idle, o.many)
	s.p("workers, starting 3 s after the last registration; the bare server, idle in the same window, is the floor: the\n")
	s.p("Go runtime's own housekeeping. notifyd sees exits through one pidfd per worker in an epoll loop, so idle, it\n")
	s.p("sleeps.\n\n| process | CPU time | per minute |\n| --- | ---: | ---: |\n")
	s.p("| notifyd, %d workers | %s | %s |\n| bare server (the floor) | %s | %s |\n", o.many, ms(idleND), ms(perMinute(idleND)), ms(idleBare), ms(perMinute(idleBare)))
	s.goal(perMinute(idleND) < goalIdleCPU, fmt.Sprintf("idle CPU with %d workers < %s per minute", o.many, ms(goalIdleCPU)),
		"%s per minute (floor %s)", ms(perMinute(idleND)), ms(perMinute(idleBare)))
	return s, nil
}

// burst starts a fresh server under st holding ws, loads it for d, and
// returns its resident memory before, its peak, and the requests per
// second.
func burst(ctx context.Context, l *lab, st setting, ws workers, d time.Duration) (before, peak, rate float64, err error) {
	var sv *server
	if st.bare {
		sv, err = l.startBare(st.env...)
	} else if sv, err = l.startNotifyd(st.env); err == nil {
		err = ws.register(sv)
	}
	if sv != nil {
		defer sv.stop()
	}
	if err != nil {
		return 0, 0, 0, err
	}
	if before, err = memory(sv.pid(), "VmRSS"); err != nil {
		return 0, 0, 0, err
	}
	if rate, err = wrk(ctx, sv.url, throughputConns, d, false); err != nil {
		return 0, 0, 0, err
	}
	peak, err = memory(sv.pid(), "VmHWM")
	return before, max(peak, before), rate, err
}

// cpuTimes reads the CPU time of each pid.
func cpuTimes(pids ...int) ([]time.Duration, error) {
	var ts []time.Duration
	for _, pid := range pids {
		t, err := cpuTime(pid)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}
