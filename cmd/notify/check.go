//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// maxCheckBody bounds what check reads of an answer: the health body is one
// short line, and a verbose one a few.
const maxCheckBody = 4 << 10

// runCheck asks notifyd's health check once: exit 0 when it answers 200, 1
// with the answer's body when it does not. It is a probe for images that
// have no curl: a Docker HEALTHCHECK or a Kubernetes exec probe.
func runCheck(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("notify check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	url := fs.String("url", defaultURL(), "health check URL, from $NOTIFYD_BIND if set")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := parseSubcommand(fs, args, stdout, "notify check [--url URL] [--timeout D]",
		"Exit 0 when notifyd's health check answers 200, else 1 with its answer."); err != nil {
		return err
	}
	if *timeout <= 0 {
		return usagef("--timeout %s: must be a positive duration such as 5s", *timeout)
	}
	a, err := get(*url, *timeout, maxCheckBody)
	if err != nil {
		return fmt.Errorf("check %s: %w", *url, err)
	}
	if a.code != http.StatusOK {
		return fmt.Errorf("unhealthy: %s: %s", a.status, oneLine(a.body))
	}
	fmt.Fprintln(stdout, oneLine(a.body))
	return nil
}

// parseSubcommand parses a subcommand's flags. --help prints its usage and
// returns errHelp; a bad flag or any argument is a usage error.
func parseSubcommand(fs *flag.FlagSet, args []string, stdout io.Writer, synopsis, about string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printSubcommandUsage(stdout, fs, synopsis, about)
			return errHelp
		}
		return usagef("%v (see %s --help)", err, fs.Name())
	}
	if fs.NArg() > 0 {
		return usagef("%s takes no arguments, got %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// printSubcommandUsage prints a subcommand's synopsis, what it does, and
// every flag, so that --help names them all.
func printSubcommandUsage(w io.Writer, fs *flag.FlagSet, synopsis, about string) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n\n", synopsis, about)
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%-9s %s%s\n", f.Name, f.Usage, def)
	})
}
