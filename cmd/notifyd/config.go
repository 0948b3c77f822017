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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd"
	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
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
	weighByIdle  bool // the agent weight follows idle workers
	weighByQueue bool // and is scaled down as the listen queues fill
	agentFloor   int
	listenQueues []backlog.Addr
	dir          string
	filename     string
	logLevel     slog.Level
	logFormat    string
	access       registry.Access
	detection    registry.Detection
	reapInterval time.Duration
	watchdogUSec uint64
	systemdReady string
	exitWith     int // 0: none
	mainPID      int // 0: none
	reloadGrace  time.Duration
	addressFile  string // "" is off
}

// defaultReloadGrace is how long a reload keeps the stopping generation's
// count by default. Requests that arrive meanwhile wait in the kernel's
// listen queue for the new workers, so the grace is also about how long a
// client may wait: 10 s covers the import of most applications (a large
// Django project imports in 2 to 5 s) and stays well inside common client
// and proxy timeouts (30 s and more), and inside gunicorn's own 30 s
// worker timeout, after which a worker that hangs in its import is killed.
// A reload whose new workers are still not ready by then is more likely
// broken than slow, and the answer tells the truth.
const defaultReloadGrace = 10 * time.Second

// maxReloadGrace bounds --reload-grace: a longer one would keep a broken
// instance in rotation for longer than any client waits.
const maxReloadGrace = 10 * time.Minute

// The --agent-weight modes. idle and queue combine: "idle,queue".
const (
	weightByCapacity = "capacity" // ready * 100 / expect
	weightByIdle     = "idle"     // scaled down by the share of busy workers
	weightByQueue    = "queue"    // scaled down as the listen queues fill
)

// option is one flag and its environment twin. set checks a value and
// stores it in its config field; its error says what is allowed. A
// repeatable option's set is called once per value, and its twin is a
// comma-separated list.
type option struct {
	name, value, usage string
	repeat             bool
	set                func(v string) error
}

// options are notifyd's flags, bound to c's fields, in the order --help
// lists them.
func (c *config) options() []option {
	return []option{
		{"socket", protocol.DefaultSocketPath(), "datagram socket workers notify; @name for an abstract socket", false,
			text(&c.socket, func(v string) bool { return v != "" && v != "@" }, "must be a path, or @name for an abstract socket")},
		{"socket-mode", "0660", "permissions of the socket file, in octal", false, func(v string) error {
			mode, err := strconv.ParseUint(v, 8, 32)
			c.socketMode = os.FileMode(mode)
			return check(err == nil && mode <= 0o777, "must be octal permissions such as 0660")
		}},
		{"socket-group", "", "group of the socket file, by name or number (default: notifyd's group)", false,
			parsed(&c.socketGID, lookupGroup)},
		{"bind", httpapi.DefaultBind, "address of the HTTP health check", false,
			text(&c.bind, isHostPort, "must be host:port, such as 127.0.0.1:8001 or [::1]:8001")},
		{"require", "1", "workers that must be ready for the health check to answer 200", false, whole(&c.require, 0, -1)},
		{"expect", "", "workers the server is configured to run, the capacity agent weights follow (default --require)", false,
			func(v string) error { c.expect = -1; return unlessEmpty(whole(&c.expect, 0, -1))(v) }},
		{"agent-bind", "", "address of the HAProxy agent-check, such as 127.0.0.1:8002 (default off)", false,
			text(&c.agentBind, func(v string) bool { return v == "" || isHostPort(v) }, "must be host:port, such as 127.0.0.1:8002")},
		{"agent-weight", weightByCapacity, "agent weight: capacity; idle to scale it down by the share of busy workers; queue to scale it down as the application's listen queues fill; or idle,queue for both", false,
			func(v string) (err error) {
				c.weighByIdle, c.weighByQueue, err = parseWeight(v)
				return err
			}},
		{"agent-weight-floor", "10", "with --agent-weight idle or queue: the lowest weight in percent busy workers or a full queue bring", false,
			whole(&c.agentFloor, 0, 100)},
		{"listen-queue", "", "an address the application listens on, to report its accept queue: 127.0.0.1:8000, [::1]:8000 or unix:/run/app.sock (repeatable)", true,
			func(v string) error {
				addr, err := backlog.ParseAddr(v)
				// An address given twice (managed mode's and the user's
				// own) is watched once: metrics allow one series per address.
				if err == nil && slices.Contains(c.listenQueues, addr) {
					return nil
				}
				c.listenQueues = append(c.listenQueues, addr)
				return err
			}},
		{"dir", protocol.RuntimeDirectory(), "directory of the state files", false,
			text(&c.dir, func(v string) bool { return v != "" }, "must name a directory")},
		{"filename", ".gunicorn.worker.{}", "state file name; {} stands for the pid", false,
			func(v string) error {
				c.filename = v
				err := registry.ValidateFilename(v)
				if errors.Is(err, registry.ErrFilenamePath) {
					err = fmt.Errorf("%w; put the directory in --dir", err)
				}
				return err
			}},
		{"log-level", "info", "debug, info, warn or error", false, func(v string) error {
			return check(c.logLevel.UnmarshalText([]byte(v)) == nil, "must be debug, info, warn or error")
		}},
		{"log-format", logText, "text, slog's key=value lines; or gunicorn, gunicorn's error log format, as managed mode asks", false,
			text(&c.logFormat, oneOf(logText, logGunicorn), "must be text or gunicorn")},
		{"access", "same-uid", "who may name which pid: same-uid, root or all", false, parsed(&c.access, registry.ParseAccess)},
		{"exit-detection", "auto", "how worker exits are seen: auto, pidfd or sweep", false, parsed(&c.detection, registry.ParseDetection)},
		{"reap-interval", "1s", "sweep interval, used only when exits are found by sweeping", false, func(v string) (err error) {
			c.reapInterval, err = time.ParseDuration(v)
			return check(err == nil && c.reapInterval > 0, "must be a positive duration such as 1s or 250ms")
		}},
		{"watchdog-usec", "0", "heartbeat deadline in µs for workers that declare none; 0 (or 18446744073709551615, systemd's infinity) is off", false, func(v string) (err error) {
			if _, err := strconv.ParseUint(v, 10, 64); err != nil {
				return errors.New("must be a whole number of microseconds, 0 for off")
			}
			if c.watchdogUSec, err = protocol.ParseWatchdogUSec(v); err != nil {
				return fmt.Errorf("must be a whole number of microseconds, 0 for off: %w", err)
			}
			return nil
		}},
		{"systemd-ready", readyWhenListening, "when to tell systemd READY=1: listening, or workers once --require are ready", false,
			text(&c.systemdReady, oneOf(readyWhenListening, readyWhenWorkers), "must be listening or workers")},
		{"address-file", "", "once every listener is bound, write the HTTP and agent addresses and the socket path to this file as JSON (default off)", false,
			func(v string) error {
				if c.addressFile = v; v == "" {
					return nil
				}
				if fi, err := os.Stat(filepath.Dir(v)); err != nil || !fi.IsDir() {
					return errors.New("its directory does not exist")
				}
				if fi, err := os.Stat(v); err == nil && fi.IsDir() {
					return errors.New("is a directory; name a file")
				}
				return nil
			}},
		{"main-pid", "", "the application's main process, such as the gunicorn master: its RELOADING=1 reloads the instance (default: a process that is not a worker and reloads itself)", false,
			unlessEmpty(func(v string) (err error) {
				c.mainPID, err = protocol.ParsePID(v)
				return check(err == nil, fmt.Sprintf("must be a process id, from 1 to %d", protocol.MaxPID))
			})},
		{"reload-grace", defaultReloadGrace.String(), "during an instance reload, how long the health answer keeps the stopping workers' count while the new ones boot; 0s tells the truth at once", false,
			func(v string) (err error) {
				c.reloadGrace, err = time.ParseDuration(v)
				return check(err == nil && c.reloadGrace >= 0 && c.reloadGrace <= maxReloadGrace,
					"must be a duration from 0s to "+maxReloadGrace.String()+", such as 10s")
			}},
		{"exit-with", "", "exit when the process with this pid exits, such as the gunicorn master that started notifyd (default none)", false,
			unlessEmpty(func(v string) (err error) {
				c.exitWith, err = protocol.ParsePID(v)
				return check(err == nil, fmt.Sprintf("must be a process id, from 1 to %d", protocol.MaxPID))
			})},
	}
}

// parseWeight reads --agent-weight: capacity, or idle and queue, alone or
// together separated by a comma, each at most once.
func parseWeight(s string) (idle, queue bool, err error) {
	if s == weightByCapacity {
		return false, false, nil
	}
	for mode := range strings.SplitSeq(s, ",") {
		switch {
		case mode == weightByIdle && !idle:
			idle = true
		case mode == weightByQueue && !queue:
			queue = true
		default:
			return false, false, errors.New("must be capacity, idle, queue, or idle,queue")
		}
	}
	return idle, queue, nil
}

// text stores a value that ok accepts.
func text(field *string, ok func(string) bool, allowed string) func(string) error {
	return func(v string) error {
		*field = v
		return check(ok(v), allowed)
	}
}

// whole stores a whole number from min to max; max -1 is no maximum.
func whole(field *int, min, max int) func(string) error {
	allowed := "must be a whole number, 0 or more"
	if max >= 0 {
		allowed = fmt.Sprintf("must be a whole percentage from %d to %d", min, max)
	}
	return func(v string) (err error) {
		*field, err = strconv.Atoi(v)
		return check(err == nil && *field >= min && (max < 0 || *field <= max), allowed)
	}
}

// parsed stores what parse makes of a value; parse's error says what is
// allowed.
func parsed[T any](field *T, parse func(string) (T, error)) func(string) error {
	return func(v string) (err error) {
		*field, err = parse(v)
		return err
	}
}

// unlessEmpty leaves an empty value, which means "none", to the default.
func unlessEmpty(set func(string) error) func(string) error {
	return func(v string) error {
		if v == "" {
			return nil
		}
		return set(v)
	}
}

func check(ok bool, allowed string) error {
	if ok {
		return nil
	}
	return errors.New(allowed)
}

func oneOf(allowed ...string) func(string) bool {
	return func(v string) bool { return slices.Contains(allowed, v) }
}

// isHostPort accepts host:port with a port number, [::1]:8001 for IPv6; an
// empty host is every address.
func isHostPort(v string) bool {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// errHelp is returned for --help, --version and --check, once they have
// printed.
var errHelp = flag.ErrHelp

// usageError is a mistake on the command line, or several, a line each;
// notifyd exits 2 for it.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// parseConfig reads flags from args and their NOTIFYD_* twins from the
// environment; a flag wins over its variable. Every value that is wrong is
// reported, each on a line naming the flag (or variable), the value and what
// is allowed. With --check, it prints that the configuration is valid and
// returns errHelp: --check binds, creates and changes nothing, so that
// whoever starts notifyd (managed mode, a deploy) can ask it first.
func parseConfig(args []string, stdout io.Writer) (config, error) {
	c := config{socketGID: -1}
	opts := c.options()
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
	showVersion := fs.Bool("version", false, "")
	checkOnly := fs.Bool("check", false, "")
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

	// Where each option's value came from, and the value, for errors that
	// weigh one option against another.
	where, value := map[string]string{}, map[string]string{}
	var problems []string
	for _, o := range opts {
		var values []string
		where[o.name], values = o.source(given[o.name])
		for _, v := range values {
			if err := o.set(v); err != nil {
				problems = append(problems, fmt.Sprintf("%s %q: %s", where[o.name], v, err))
			}
			value[o.name] = v
		}
	}
	if c.expect < 0 {
		c.expect = c.require
	}
	if c.weighByQueue && len(c.listenQueues) == 0 {
		problems = append(problems, fmt.Sprintf("%s %q: needs at least one --listen-queue to weigh by", where["agent-weight"], value["agent-weight"]))
	}
	if len(problems) > 0 {
		return c, &usageError{strings.Join(problems, "\n")}
	}
	if *checkOnly {
		fmt.Fprintln(stdout, "notifyd: the configuration is valid")
		return c, errHelp
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
		if o.value == "" { // the usage says what none means
			fmt.Fprintf(w, "  --%-18s %s\n", o.name, o.usage)
			continue
		}
		fmt.Fprintf(w, "  --%-18s %s (default %q)\n", o.name, o.usage, o.value)
	}
	fmt.Fprintf(w, "  --%-18s %s\n", "check", "check every flag and variable, report each mistake, and exit; binds, creates and changes nothing")
	fmt.Fprintf(w, "  --%-18s %s\n", "version", "print the version and exit")
}
