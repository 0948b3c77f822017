// Package main is the saturation benchmark. It puts notifyd where it is meant
// to help, next to an application whose workers are all busy, and measures
// side by side in one run:
//
//  1. health-check latency under saturation: real gunicorn runs
//     examples/gunicorn/hello.py with two sync workers, kept busy by more
//     clients looping on /sleep than there are workers, so the listen queue
//     fills. Three health endpoints are then probed at the same fixed rate,
//     open loop, each request with a timeout: (a) a route of the application
//     itself, answered by the busy workers; (b) a re-creation of the seed
//     package, a single-threaded wsgiref server in a thread of the gunicorn
//     master that counts the pid files the workers write for it
//     (bench/seed); (c) notifyd. A bare net/http server, probed the same
//     way, is the reference: the floor this machine sets for any endpoint.
//  2. throughput against the physical limit: wrk against notifyd's health
//     endpoint, a bare net/http server answering a constant body of the same
//     size from a process of its own, and the seed-style server, with
//     keep-alive connections and with a new connection per request.
//
// Run it from the repository root:
//
//	go run ./bench/saturation [-duration 30s] [-csv samples.csv] [-rounds 5] [-round 3s]
//
// It needs gunicorn and wrk on PATH (on Debian: apt-get install gunicorn
// wrk). It builds notifyd (without -race) into a temporary directory, starts
// every server on a loopback port the kernel picks, prints a Markdown report
// on stdout and progress on stderr. The raw latency samples go to the -csv
// file, as seconds,target,latency_ms,outcome, for bench/chart to draw. A run
// with the defaults takes about three minutes.
//
// The bare server is this program too, started as a process of its own with
// the hidden subcommand "bare-server -body TEXT".
//
// Contenders run side by side in one run, alternating, and the report gives
// medians and ratios: on a shared or noisy machine those are what to read,
// not the absolute numbers.
//
// Any failed check ends the run with a message saying what was wrong. On
// every path out, including an error or SIGINT, each process it started
// (notifyd, gunicorn and its workers, the bare server, wrk) is stopped and
// reaped, and the temporary directory is removed.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// benchName is what the benchmark calls itself in messages and commands.
const benchName = "saturation"

func main() {
	benchkit.Main(benchName, func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		if len(args) > 0 && args[0] == bareCommand {
			return serveBare(ctx, args[1:], stdout, stderr)
		}
		return run(ctx, args, stdout, stderr)
	})
}

// options are the command line settings.
type options struct {
	duration    time.Duration // probing under saturation
	interval    time.Duration // between two probes of one target
	timeout     time.Duration // of one probe
	sleepers    int           // clients keeping the workers busy
	sleep       time.Duration // what each of their requests asks the app to sleep
	csv         string        // where the raw samples go; "" for nowhere
	rounds      int           // wrk rounds per contender and mode
	round       time.Duration // one wrk round
	warmUp      time.Duration // wrk warm-up per contender and mode; 0 for none
	connections int           // wrk connections
}

// Bounds of the options, so that a typo cannot start a run of days or
// thousands of connections.
const (
	minDuration    = time.Second
	maxDuration    = time.Hour
	minInterval    = time.Millisecond
	maxInterval    = 10 * time.Second
	minTimeout     = 10 * time.Millisecond
	maxTimeout     = 10 * time.Second
	maxSleepers    = 256
	minSleep       = 500 * time.Millisecond
	maxSleep       = 25 * time.Second // gunicorn's --timeout, 30 s, kills a sync worker that takes longer
	maxRounds      = 100
	maxRound       = 5 * time.Minute
	maxWarmUp      = time.Minute
	maxConnections = 1024
)

func parseOptions(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet(benchName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to probe the health endpoints under saturation")
	fs.DurationVar(&o.interval, "interval", 20*time.Millisecond, "time between two probes of one endpoint")
	fs.DurationVar(&o.timeout, "timeout", time.Second, "timeout of one probe")
	fs.IntVar(&o.sleepers, "sleepers", 6, "clients looping on /sleep to keep the "+fmt.Sprint(appWorkers)+" workers busy")
	fs.DurationVar(&o.sleep, "sleep", 5*time.Second, "how long each /sleep request sleeps")
	fs.StringVar(&o.csv, "csv", "", "write the raw latency samples to this CSV file")
	fs.IntVar(&o.rounds, "rounds", 5, "wrk rounds per contender and connection mode")
	fs.DurationVar(&o.round, "round", 3*time.Second, "length of one wrk round, whole seconds")
	fs.DurationVar(&o.warmUp, "warmup", time.Second, "wrk warm-up per contender and connection mode, whole seconds; 0 for none")
	fs.IntVar(&o.connections, "connections", 8, "wrk connections")
	if err := benchkit.ParseFlags(fs, args); err != nil {
		return o, err
	}
	return o, o.check()
}

// check returns the first thing wrong with o, or nil.
func (o options) check() error {
	return cmp.Or(
		benchkit.CheckRange("duration", o.duration, minDuration, maxDuration),
		benchkit.CheckRange("interval", o.interval, minInterval, maxInterval),
		benchkit.CheckRange("timeout", o.timeout, minTimeout, maxTimeout),
		o.checkSleepers(),
		benchkit.CheckRange("sleep", o.sleep, minSleep, maxSleep),
		benchkit.CheckRange("rounds", o.rounds, 1, maxRounds),
		checkWholeSeconds("round", o.round, time.Second, maxRound),
		checkWholeSeconds("warmup", o.warmUp, 0, maxWarmUp),
		benchkit.CheckRange("connections", o.connections, 1, maxConnections),
	)
}

// checkSleepers fails unless there are more clients than workers, so that
// the listen queue fills.
func (o options) checkSleepers() error {
	if o.sleepers <= appWorkers || o.sleepers > maxSleepers {
		return fmt.Errorf("-sleepers %d: must be between %d (more than the workers, so the queue fills) and %d", o.sleepers, appWorkers+1, maxSleepers)
	}
	return nil
}

// checkWholeSeconds is benchkit.CheckRange for a duration that wrk takes,
// which must be whole seconds.
func checkWholeSeconds(name string, d, lo, hi time.Duration) error {
	if d < lo || d > hi || d%time.Second != 0 {
		return fmt.Errorf("-%s %s: must be whole seconds between %s and %s (wrk takes whole seconds)", name, d, lo, hi)
	}
	return nil
}

// run measures everything and writes the report to stdout. It returns the
// first failed check, or "interrupted" once ctx ends; the lab's Close stops
// whatever was started.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	opts, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	tools, err := findTools(ctx)
	if err != nil {
		return err
	}
	root, err := benchkit.ModuleRoot(ctx, benchName, appDir, seedConfig)
	if err != nil {
		return err
	}
	machine, err := benchkit.DescribeMachine(ctx)
	if err != nil {
		return err
	}
	rep := &report{command: commandLine(args), opts: opts, machine: machine, gomaxprocs: runtime.GOMAXPROCS(0), tools: tools}

	l, err := newLab(stderr, tools)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := l.BuildNotifyd(ctx, root); err != nil {
		return err
	}
	st, err := startStack(ctx, l, root)
	if err != nil {
		return benchkit.StepError(ctx, "start", err)
	}
	rep.seedServer = st.seedServer
	if rep.latency, err = measureSaturation(ctx, l, st, opts); err != nil {
		return benchkit.StepError(ctx, "health-check latency under saturation", err)
	}
	if opts.csv != "" {
		if err := writeCSV(opts.csv, rep.latency.targets); err != nil {
			return err
		}
		l.Progress("wrote the samples to %s", opts.csv)
	}
	if rep.throughput, err = measureThroughput(ctx, l, st, opts); err != nil {
		return benchkit.StepError(ctx, "throughput", err)
	}
	rep.write(stdout)
	return nil
}

// commandLine is the command as a reader would type it again.
func commandLine(args []string) string {
	return benchkit.ShellWords(append([]string{"go", "run", "./bench/" + benchName}, args...))
}
