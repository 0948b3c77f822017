// Package main is the liveness benchmark. It measures how notifyd follows
// the lives of its workers, and what that costs:
//
//  1. death detection latency: how long after a SIGKILL a worker leaves the
//     health count, with pidfd exit detection and with the kill(0) sweep
//     (--exit-detection sweep --reap-interval 1s) as the baseline, next to
//     the kernel's own time to turn a killed process into a zombie;
//  2. idle CPU: the CPU time and wake-ups of an idle notifyd holding 1000
//     workers, pidfd against sweep;
//  3. health throughput: requests per second of an instance holding many
//     workers against one holding a single worker;
//  4. registration rate: READY=1 messages applied per second, each ending in
//     a state file, against a plain loop writing the same files.
//
// Run it from the repository root:
//
//	go run ./bench/liveness [-trials 100] [-idle 60s] [-workers 10000]
//
// It builds notifyd (without -race) into a temporary directory, starts the
// instances it needs with --bind 127.0.0.1:0, registers `sleep` children
// through the notify socket (PID= names them; the sender must be root or
// their owner, which it is) and prints a Markdown report on stdout. Progress
// goes to stderr. Contenders run side by side in one run, alternating, and
// the report gives medians and ratios: on a shared or noisy machine those are
// what to read, not the absolute numbers. A run with the defaults takes
// about seven minutes on two cores, longer on a busy machine.
//
// The temporary directory is made under $TMPDIR, else /tmp; its file system
// is where notifyd and the plain loop write files, and the report names it.
//
// Any failed check ends the run with a message saying what was wrong. On
// every path out, including an error or SIGINT, each notifyd and each
// sleeping child it started is stopped and reaped, and the temporary
// directory is removed.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// benchName is what the benchmark calls itself in messages and commands.
const benchName = "liveness"

func main() {
	benchkit.Main(benchName, run)
}

// options are the command line settings.
type options struct {
	trials  int
	idle    time.Duration
	workers int
	only    []string // steps to run; empty means all
}

// stepNames are the measurements, in the order they run, as -only names them.
var stepNames = []string{"death", "idle", "throughput", "registration"}

// Bounds of the options, so that a typo cannot start a run of days or a
// million processes.
const (
	maxTrials  = 10_000
	minIdle    = time.Second
	maxIdle    = time.Hour
	maxWorkers = 1 << 20
)

func parseOptions(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet(benchName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.IntVar(&o.trials, "trials", 100, "death detection trials per exit detection mode")
	fs.DurationVar(&o.idle, "idle", 60*time.Second, "idle CPU measurement window")
	fs.IntVar(&o.workers, "workers", 10000, "workers registered in the throughput measurement's busy instance")
	only := fs.String("only", "", "comma-separated measurements to run, of "+strings.Join(stepNames, ","))
	if err := benchkit.ParseFlags(fs, args); err != nil {
		return o, err
	}
	if *only != "" {
		for name := range strings.SplitSeq(*only, ",") {
			if !slices.Contains(stepNames, name) {
				return o, fmt.Errorf("-only: unknown measurement %q; the measurements are %s", name, strings.Join(stepNames, ", "))
			}
			o.only = append(o.only, name)
		}
	}
	return o, cmp.Or(
		benchkit.CheckRange("trials", o.trials, 1, maxTrials),
		benchkit.CheckRange("idle", o.idle, minIdle, maxIdle),
		benchkit.CheckRange("workers", o.workers, 1, maxWorkers),
	)
}

// run measures everything and writes the report to stdout. It returns the
// first failed check, or "interrupted" once ctx ends; the lab's Close stops
// whatever was started.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	opts, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	rep := &report{command: commandLine(args), opts: opts}
	root, err := benchkit.ModuleRoot(ctx, benchName)
	if err != nil {
		return err
	}
	if rep.machine, err = benchkit.DescribeMachine(ctx); err != nil {
		return err
	}
	lim, err := readLimits()
	if err != nil {
		return err
	}
	if rep.workers, rep.capacityNote, err = lim.fit(opts.workers); err != nil {
		return err
	}
	rep.limits = lim

	l, err := newLab(stderr)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if rep.capacityNote != "" {
		l.Progress("%s", rep.capacityNote)
	}
	if err := l.BuildNotifyd(ctx, root); err != nil {
		return err
	}

	steps := []struct {
		name, title string
		do          func() error
	}{
		{"death", "death detection", func() (err error) { rep.death, err = measureDeath(ctx, l, opts.trials); return err }},
		{"idle", "idle CPU", func() (err error) { rep.idle, err = measureIdle(ctx, l, opts.idle); return err }},
		{"throughput", "health throughput", func() (err error) { rep.load, err = measureThroughput(ctx, l, rep.workers); return err }},
		{"registration", "registration rate", func() (err error) { rep.reg, err = measureRegistration(ctx, l); return err }},
	}
	for _, s := range steps {
		if len(opts.only) > 0 && !slices.Contains(opts.only, s.name) {
			continue
		}
		if err := s.do(); err != nil {
			return benchkit.StepError(ctx, s.title, err)
		}
	}
	rep.write(stdout)
	return nil
}

// commandLine is the command as a reader would type it again.
func commandLine(args []string) string {
	return benchkit.ShellWords(append([]string{"go", "run", "./bench/" + benchName}, args...))
}
