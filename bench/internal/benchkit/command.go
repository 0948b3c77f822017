package benchkit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Main runs the benchmark program called name. run gets the command line
// arguments, stdout, stderr and a context that ends at SIGINT or SIGTERM, so
// that the run can stop what it started before it returns. Main then exits:
// with status 0 when run returned nil or flag.ErrHelp (the usage was asked
// for, and the flag package has printed it), else with status 1 and
// "name: error" on stderr.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil || errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(1)
}

// ParseFlags parses args with fs and fails on anything left over: a
// benchmark takes only flags.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes only flags", fs.Arg(0), fs.Name())
	}
	return nil
}

// CheckRange fails unless lo <= v <= hi, naming the flag -name and its
// bounds. Bounds keep a typo from starting a run of days or of a million
// processes.
func CheckRange[T int | time.Duration](name string, v, lo, hi T) error {
	if v < lo || v > hi {
		return fmt.Errorf("-%s %v: must be between %v and %v", name, v, lo, hi)
	}
	return nil
}

// StepError names the step of a run that failed with err, and says plainly
// that the run was interrupted when ctx has ended: the step's own error is
// then only a consequence of the signal.
func StepError(ctx context.Context, step string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: interrupted", step)
	}
	return fmt.Errorf("%s: %w", step, err)
}

// ShellWords joins words as a shell reads them back, so that a report's
// command can be pasted and run again: words with spaces or special
// characters go in single quotes.
func ShellWords(words []string) string {
	parts := make([]string, len(words))
	for i, w := range words {
		switch {
		case w == "" || strings.ContainsAny(w, " \t\"$\\|&;()<>*?`!#~"):
			parts[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		case strings.Contains(w, "'"):
			parts[i] = strings.ReplaceAll(w, "'", `\'`)
		default:
			parts[i] = w
		}
	}
	return strings.Join(parts, " ")
}
