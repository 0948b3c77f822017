package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd"
	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// config is notifyd's validated configuration.
type config struct {
	socket       string
	socketMode   os.FileMode
	socketGID    int // -1: leave the group alone
	bind         string
	require      int
	expect       int // -1 until set: --require
	agentBind    string
	agentWeight  string
	agentFloor   int
	listenQueues []backlog.Addr
	dir          string
	filename     string
	logLevel     slog.Level
	access       registry.Access
	detection    registry.Detection
	reapInterval time.Duration
	watchdogUSec uint64
	systemdReady string
	exitWith     int // 0: none
}

// The --agent-weight modes.
const (
	weightByCapacity = "capacity" // ready * 100 / expect
	weightByQueue    = "queue"    // and scaled down as the listen queues fill
)

// option is one flag and its environment twin. set checks a value and
// stores it in its config field; its error says what is allowed. A
// repeatable option's set is called once per value, and its twin is a
// comma-separated list.
type option struct {
	name, value, usage string
	repeat             bool
	set                func(c *config, v string) error
}

// options are notifyd's flags, in the order --help lists them.
func options() []option {
	return []option{
		{name: "socket", value: protocol.DefaultSocketPath(), usage: "datagram socket workers notify; @name for an abstract socket",
			set: func(c *config, v string) error {
				if v == "" || v == "@" {
					return errors.New("must be a path, or @name for an abstract socket")
				}
				c.socket = v
				return nil
			}},
		{name: "socket-mode", value: "0660", usage: "permissions of the socket file, in octal",
			set: func(c *config, v string) error {
				mode, err := strconv.ParseUint(v, 8, 32)
				if err != nil || mode > 0o777 {
					return errors.New("must be octal permissions such as 0660")
				}
				c.socketMode = os.FileMode(mode)
				return nil
			}},
		{name: "socket-group", usage: "group of the socket file, by name or number (default: notifyd's group)",
			set: func(c *config, v string) (err error) {
				c.socketGID, err = lookupGroup(v)
				return err
			}},
		{name: "bind", value: "127.0.0.1:8001", usage: "address of the HTTP health check",
			set: func(c *config, v string) error {
				c.bind = v
				return hostPort(v, "must be host:port, such as 127.0.0.1:8001 or [::1]:8001")
			}},
		{name: "require", value: "1", usage: "workers that must be ready for the health check to answer 200",
			set: func(c *config, v string) (err error) {
				c.require, err = count(v)
				return err
			}},
		{name: "expect", usage: "workers the server is configured to run, the capacity agent weights follow (default --require)",
			set: func(c *config, v string) (err error) {
				if v == "" {
					c.expect = -1
					return nil
				}
				c.expect, err = count(v)
				return err
			}},
		{name: "agent-bind", usage: "address of the HAProxy agent-check, such as 127.0.0.1:8002 (default off)",
			set: func(c *config, v string) error {
				if c.agentBind = v; v == "" {
					return nil
				}
				return hostPort(v, "must be host:port, such as 127.0.0.1:8002")
			}},
		{name: "agent-weight", value: weightByCapacity, usage: "agent weight: capacity, or queue to scale it down as the application's listen queues fill",
			set: func(c *config, v string) error {
				c.agentWeight = v
				return oneOf(v, "must be capacity or queue", weightByCapacity, weightByQueue)
			}},
		{name: "agent-weight-floor", value: "10", usage: "with --agent-weight queue: the lowest weight in percent a full queue brings",
			set: func(c *config, v string) (err error) {
				if c.agentFloor, err = strconv.Atoi(v); err != nil || c.agentFloor < 0 || c.agentFloor > 100 {
					return errors.New("must be a whole percentage from 0 to 100")
				}
				return nil
			}},
		{name: "listen-queue", repeat: true, usage: "an address the application listens on, to report its accept queue: 127.0.0.1:8000, [::1]:8000 or unix:/run/app.sock (repeatable)",
			set: func(c *config, v string) error {
				addr, err := backlog.ParseAddr(v)
				c.listenQueues = append(c.listenQueues, addr)
				return err
			}},
		{name: "dir", value: protocol.RuntimeDirectory(), usage: "directory of the state files",
			set: func(c *config, v string) error {
				if c.dir = v; v == "" {
					return errors.New("must name a directory")
				}
				return nil
			}},
		{name: "filename", value: ".gunicorn.worker.{}", usage: "state file name; {} stands for the pid",
			set: func(c *config, v string) error {
				c.filename = v
				return registry.ValidateFilename(v)
			}},
		{name: "log-level", value: "info", usage: "debug, info, warn or error",
			set: func(c *config, v string) error {
				if c.logLevel.UnmarshalText([]byte(v)) != nil {
					return errors.New("must be debug, info, warn or error")
				}
				return nil
			}},
		{name: "access", value: "same-uid", usage: "who may name which pid: same-uid, root or all",
			set: func(c *config, v string) (err error) {
				c.access, err = registry.ParseAccess(v)
				return err
			}},
		{name: "exit-detection", value: "auto", usage: "how worker exits are seen: auto, pidfd or sweep",
			set: func(c *config, v string) (err error) {
				c.detection, err = registry.ParseDetection(v)
				return err
			}},
		{name: "reap-interval", value: "1s", usage: "sweep interval, used only when exits are found by sweeping",
			set: func(c *config, v string) (err error) {
				if c.reapInterval, err = time.ParseDuration(v); err != nil || c.reapInterval <= 0 {
					return errors.New("must be a positive duration such as 1s or 250ms")
				}
				return nil
			}},
		{name: "watchdog-usec", value: "0", usage: "heartbeat deadline in µs for workers that declare none; 0 is off",
			set: func(c *config, v string) (err error) {
				if c.watchdogUSec, err = strconv.ParseUint(v, 10, 64); err != nil {
					return errors.New("must be a whole number of microseconds, 0 for off")
				}
				return nil
			}},
		{name: "systemd-ready", value: readyWhenListening, usage: "when to tell systemd READY=1: listening, or workers once --require are ready",
			set: func(c *config, v string) error {
				c.systemdReady = v
				return oneOf(v, "must be listening or workers", readyWhenListening, readyWhenWorkers)
			}},
		{name: "exit-with", usage: "exit when the process with this pid exits, such as the gunicorn master that started notifyd (default none)",
			set: func(c *config, v string) (err error) {
				if v == "" {
					return nil
				}
				if c.exitWith, err = strconv.Atoi(v); err != nil || c.exitWith <= 0 {
					return errors.New("must be a process id, a whole number above 0")
				}
				return nil
			}},
	}
}

// errHelp is returned for --help and --version, once they have printed.
var errHelp = flag.ErrHelp

// usageError is a mistake on the command line; notifyd exits 2 for it.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// parseConfig reads flags from args and their NOTIFYD_* twins from the
// environment; a flag wins over its variable. Every error is one line naming
// the flag (or variable), the value and what is allowed.
func parseConfig(args []string, stdout io.Writer) (config, error) {
	opts := options()
	fs := flag.NewFlagSet("notifyd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	given := map[string][]string{} // values from the command line, by flag
	for _, o := range opts {
		fs.Func(o.name, o.usage, func(v string) error {
			if !o.repeat {
				given[o.name] = given[o.name][:0]
			}
			given[o.name] = append(given[o.name], v)
			return nil
		})
	}
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(opts, stdout)
			return config{}, errHelp
		}
		return config{}, &usageError{err.Error() + " (see notifyd --help)"}
	}
	if *showVersion {
		fmt.Fprintln(stdout, "notifyd", notifyd.Version)
		return config{}, errHelp
	}
	if fs.NArg() > 0 {
		return config{}, &usageError{fmt.Sprintf("unexpected argument %q: notifyd takes only flags (see notifyd --help)", fs.Arg(0))}
	}

	c := config{socketGID: -1}
	where := map[string]string{} // where each option's value came from
	for _, o := range opts {
		var values []string
		where[o.name], values = o.source(given[o.name])
		for _, v := range values {
			if err := o.set(&c, v); err != nil {
				return c, &usageError{fmt.Sprintf("%s %q: %s", where[o.name], v, err)}
			}
		}
	}
	if c.expect < 0 {
		c.expect = c.require
	}
	if c.agentWeight == weightByQueue && len(c.listenQueues) == 0 {
		return c, &usageError{fmt.Sprintf("%s %q: needs at least one --listen-queue to weigh by", where["agent-weight"], c.agentWeight)}
	}
	return c, nil
}

// source returns where o's values come from, as an error names it, and the
// values: the command line's, else the environment twin's, else the
// default.
func (o option) source(flagged []string) (string, []string) {
	if len(flagged) > 0 {
		return "--" + o.name, flagged
	}
	env := envName(o.name)
	v, ok := os.LookupEnv(env)
	switch {
	case !ok:
		v, env = o.value, "--"+o.name
	case o.repeat:
		var vals []string
		for part := range strings.SplitSeq(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				vals = append(vals, part)
			}
		}
		return env, vals
	}
	if o.repeat && v == "" {
		return env, nil
	}
	return env, []string{v}
}

// envName is a flag's environment twin: --socket-mode is NOTIFYD_SOCKET_MODE.
func envName(flagName string) string {
	return "NOTIFYD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// listenConfig describes the notify socket notifyd creates.
func (c config) listenConfig() protocol.ListenConfig {
	return protocol.ListenConfig{Path: c.socket, Mode: c.socketMode, GID: c.socketGID}
}

func hostPort(v, msg string) error {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return errors.New(msg)
	}
	return nil
}

func count(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, errors.New("must be a whole number, 0 or more")
	}
	return n, nil
}

func oneOf(v, msg string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return errors.New(msg)
}

func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, errors.New("no such group")
	}
	return strconv.Atoi(g.Gid)
}

func printUsage(opts []option, w io.Writer) {
	fmt.Fprint(w, `notifyd: a health check for pre-fork servers that their own workers cannot block

Workers send sd_notify messages (READY=1, STOPPING=1, ...) to notifyd's socket;
notifyd answers HTTP with 200 while at least --require of them are ready.

Usage: notifyd [flags]

Every flag has an environment twin: --require is NOTIFYD_REQUIRE. A flag wins
over its variable.

`)
	for _, o := range opts {
		fmt.Fprintf(w, "  --%-18s %s (default %q)\n", o.name, o.usage, o.value)
	}
	fmt.Fprintf(w, "  --%-18s %s\n", "version", "print the version and exit")
}
