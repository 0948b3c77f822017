//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/notifyd/notifyd"
	"github.com/notifyd/notifyd/internal/exitwatch"
	"github.com/notifyd/notifyd/protocol"
)

var errHelp = flag.ErrHelp

// usageError is a mistake on the command line; notify exits 2 for it.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// request is one parsed command line.
type request struct {
	socket  string
	payload []byte
	block   bool
	timeout time.Duration
}

func run(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "check":
			return runCheck(args[1:], stdout)
		case "status":
			return runStatus(args[1:], stdout)
		case "wait":
			return runWait(args[1:], stdout)
		}
	}
	req, err := parseArgs(args, stdout)
	if err != nil {
		return err
	}
	c, err := protocol.Dial(req.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	if err := c.Send(req.payload, req.timeout); err != nil {
		return err
	}
	if !req.block {
		return nil
	}
	return c.Barrier(req.timeout - time.Since(start))
}

func parseArgs(args []string, stdout io.Writer) (request, error) {
	fs := flag.NewFlagSet("notify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ready := fs.Bool("ready", false, "send READY=1: the worker is ready")
	stopping := fs.Bool("stopping", false, "send STOPPING=1: the worker leaves now")
	reloading := fs.Bool("reloading", false, "send RELOADING=1: not ready until the next READY=1")
	status := fs.String("status", "", "send STATUS=TEXT")
	pidArg := fs.String("pid", "parent", "the pid the message is about: a number, self or parent")
	socket := fs.String("socket", "", "notifyd's socket (default $NOTIFYD_SOCKET, else "+protocol.DefaultSocketPath()+")")
	drain := fs.Bool("drain", false, "drain the instance: notifyd's health check fails until --undrain (root or notifyd's user only)")
	undrain := fs.Bool("undrain", false, "end a drain")
	noBlock := fs.Bool("no-block", false, "do not wait for notifyd to process the message")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for notifyd")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, stdout)
			return request{}, errHelp
		}
		return request{}, usagef("%v (see notify --help)", err)
	}
	if *showVersion {
		fmt.Fprintln(stdout, "notify", notifyd.Version)
		return request{}, errHelp
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var m protocol.Message
	if *drain || *undrain {
		if *drain && *undrain || *ready || *stopping || *reloading || set["status"] || set["pid"] || fs.NArg() > 0 {
			return request{}, usagef("--drain and --undrain go alone: they are about the instance, not a worker")
		}
		on := *drain
		m.Drain = &on
		return finishRequest(m, nil, *socket, *noBlock, *timeout)
	}
	switch {
	case *ready && *stopping, *ready && *reloading, *stopping && *reloading:
		return request{}, usagef("--ready, --stopping and --reloading exclude each other")
	case *ready:
		m.Lifecycle = protocol.Ready
	case *stopping:
		m.Lifecycle = protocol.Stopping
	case *reloading:
		m.Lifecycle = protocol.Reloading
	}
	if set["status"] {
		m.Status = status
	}
	pid, err := resolvePID(*pidArg)
	if err != nil {
		return request{}, err
	}
	m.PID = pid
	if m.Lifecycle == protocol.NoLifecycle && m.Status == nil && fs.NArg() == 0 {
		return request{}, usagef("nothing to send: give --ready, --stopping, --reloading, --status, --drain, --undrain or KEY=VALUE")
	}
	return finishRequest(m, fs.Args(), *socket, *noBlock, *timeout)
}

// finishRequest encodes m with the raw KEY=VALUE assignments after it, and
// checks the whole message here, where a mistake can be reported, rather
// than have notifyd reject it where only its log would say why.
func finishRequest(m protocol.Message, raw []string, socket string, noBlock bool, timeout time.Duration) (request, error) {
	if timeout <= 0 {
		return request{}, usagef("--timeout %s: must be a positive duration such as 5s", timeout)
	}
	payload, err := m.Encode()
	if err != nil {
		return request{}, usagef("%v", err)
	}
	for _, kv := range raw {
		if !strings.Contains(kv, "=") {
			return request{}, usagef("argument %q: want KEY=VALUE", kv)
		}
		payload = append(append(payload, '\n'), kv...)
	}
	switch parsed, err := protocol.Parse(payload); {
	case err != nil:
		return request{}, usagef("%v", err)
	case parsed.Barrier:
		return request{}, usagef("BARRIER=1 is sent by notify itself; use --no-block to skip it")
	}
	req := request{socket: socket, payload: payload, block: !noBlock, timeout: timeout}
	if req.socket == "" {
		req.socket = os.Getenv("NOTIFYD_SOCKET")
	}
	if req.socket == "" {
		req.socket = protocol.DefaultSocketPath()
	}
	return req, nil
}

// resolvePID turns --pid into a pid. The parent, the default, is the process
// that ran notify; pid 1 is refused unless named explicitly, since a parent
// of 1 usually means the real parent has gone.
func resolvePID(arg string) (int, error) {
	switch arg {
	case "self":
		return os.Getpid(), nil
	case "parent":
		ppid := os.Getppid()
		if ppid == 1 {
			return 0, usagef("--pid parent: the parent is pid 1 (the real parent may have exited); pass --pid 1 if pid 1 is meant")
		}
		return ppid, nil
	}
	pid, err := protocol.ParsePID(arg)
	if err != nil {
		return 0, usagef("--pid %q: must be a pid from 1 to %d, self or parent", arg, protocol.MaxPID)
	}
	// A pid that does not exist is notifyd's to reject; a thread id never
	// names a worker.
	if _, err := exitwatch.ProcessOf(pid); errors.Is(err, exitwatch.ErrThread) {
		return 0, usagef("--pid %d: %v; name the process", pid, err)
	}
	return pid, nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `notify: send one sd_notify message to notifyd

Usage: notify [--ready|--stopping|--reloading] [--status TEXT] [--pid N|self|parent]
              [--socket PATH] [--no-block] [--timeout D] [KEY=VALUE...]
       notify --drain|--undrain [--socket PATH]
       notify check [--url URL] [--timeout D]
       notify status [--url URL] [--json]
       notify wait --ready N [--fresh] [--timeout D] [--url URL]

It never uses $NOTIFY_SOCKET: inside a Type=notify unit that is systemd's.
Exit status: 0 notifyd processed the message, 1 error, 2 usage error.
notify check, status and wait --help describe those commands.

`)
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%-10s %s\n", f.Name, f.Usage)
	})
}
