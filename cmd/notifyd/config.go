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
	dir          string
	filename     string
	logLevel     slog.Level
	access       registry.Access
	detection    registry.Detection
	reapInterval time.Duration
	watchdogUSec uint64
	systemdReady string
	expect       int
	agentBind    string // "" is off
	listenQueues []backlog.Addr
	agentWeight  string
	agentFloor   int
	addressFile  string // "" is off
}

// The --agent-weight modes.
const (
	weightByCapacity = "capacity" // ready * 100 / expect
	weightByQueue    = "queue"    // and scaled down as the listen queues fill
)

// listFlag is a repeatable flag. Its environment twin is a comma-separated
// list; flags on the command line replace it rather than add to it.
type listFlag struct {
	vals    []string
	fromEnv bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

func (l *listFlag) Set(v string) error {
	if l.fromEnv {
		l.vals, l.fromEnv = nil, false
	}
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			l.vals = append(l.vals, part)
		}
	}
	return nil
}

// errHelp is returned for --help, after the usage has been printed.
var errHelp = flag.ErrHelp

// usageError is a mistake on the command line; notifyd exits 2 for it.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// parseConfig reads flags from args and their NOTIFYD_* twins from the
// environment; a flag wins over its variable. Every error is one line naming
// the flag (or variable), the value and what is allowed.
func parseConfig(args []string, stdout io.Writer) (config, error) {
	fs := flag.NewFlagSet("notifyd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := map[string]*string{}
	def := func(name, value, usage string) { v[name] = fs.String(name, value, usage) }
	def("socket", protocol.DefaultSocketPath(), "datagram socket workers notify; @name for an abstract socket")
	def("socket-mode", "0660", "permissions of the socket file, in octal")
	def("socket-group", "", "group of the socket file, by name or number (default: notifyd's group)")
	def("bind", "127.0.0.1:8001", "address of the HTTP health check")
	def("require", "1", "workers that must be ready for the health check to answer 200")
	def("expect", "", "workers the server is configured to run, the capacity agent weights follow (default --require)")
	def("agent-bind", "", "address of the HAProxy agent-check, such as 127.0.0.1:8002 (default off)")
	def("agent-weight", weightByCapacity, "agent weight: capacity, or queue to scale it down as the application's listen queues fill")
	def("agent-weight-floor", "10", "with --agent-weight queue: the lowest weight in percent a full queue brings")
	queues := &listFlag{}
	fs.Var(queues, "listen-queue", "an address the application listens on, to report its accept queue: 127.0.0.1:8000, [::1]:8000 or unix:/run/app.sock (repeatable)")
	def("dir", protocol.RuntimeDirectory(), "directory of the state files")
	def("filename", ".gunicorn.worker.{}", "state file name; {} stands for the pid")
	def("log-level", "info", "debug, info, warn or error")
	def("access", "same-uid", "who may name which pid: same-uid, root or all")
	def("exit-detection", "auto", "how worker exits are seen: auto, pidfd or sweep")
	def("reap-interval", "1s", "sweep interval, used only when exits are found by sweeping")
	def("watchdog-usec", "0", "heartbeat deadline in µs for workers that declare none; 0 is off")
	def("address-file", "", "once every listener is bound, write the HTTP and agent addresses and the socket path to this file as JSON (default off)")
	def("systemd-ready", readyWhenListening, "when to tell systemd READY=1: listening, or workers once --require are ready")

	// Environment first, so that flags parsed after it win.
	fromEnv := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		if val, ok := os.LookupEnv(envName(f.Name)); ok {
			f.Value.Set(val)
			fromEnv[f.Name] = true
		}
	})
	queues.fromEnv = fromEnv["listen-queue"]
	// Registered after the environment is read: it has no twin.
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, stdout)
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
	fromFlag := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { fromFlag[f.Name] = true })
	bad := func(name, msg string) error {
		where := "--" + name
		if fromEnv[name] && !fromFlag[name] {
			where = envName(name)
		}
		return &usageError{fmt.Sprintf("%s %q: %s", where, *v[name], msg)}
	}

	var c config
	var err error
	c.socket = *v["socket"]
	if c.socket == "" || c.socket == "@" {
		return c, bad("socket", "must be a path, or @name for an abstract socket")
	}
	mode, err := strconv.ParseUint(*v["socket-mode"], 8, 32)
	if err != nil || mode > 0o777 {
		return c, bad("socket-mode", "must be octal permissions such as 0660")
	}
	c.socketMode = os.FileMode(mode)
	if c.socketGID, err = lookupGroup(*v["socket-group"]); err != nil {
		return c, bad("socket-group", err.Error())
	}
	c.bind = *v["bind"]
	if _, _, err := net.SplitHostPort(c.bind); err != nil {
		return c, bad("bind", "must be host:port, such as 127.0.0.1:8001 or [::1]:8001")
	}
	if c.require, err = strconv.Atoi(*v["require"]); err != nil || c.require < 0 {
		return c, bad("require", "must be a whole number, 0 or more")
	}
	if c.dir = *v["dir"]; c.dir == "" {
		return c, bad("dir", "must name a directory")
	}
	c.filename = *v["filename"]
	if err := registry.ValidateFilename(c.filename); err != nil {
		return c, bad("filename", err.Error())
	}
	if err := c.logLevel.UnmarshalText([]byte(*v["log-level"])); err != nil {
		return c, bad("log-level", "must be debug, info, warn or error")
	}
	if c.access, err = registry.ParseAccess(*v["access"]); err != nil {
		return c, bad("access", err.Error())
	}
	if c.detection, err = registry.ParseDetection(*v["exit-detection"]); err != nil {
		return c, bad("exit-detection", err.Error())
	}
	if c.reapInterval, err = time.ParseDuration(*v["reap-interval"]); err != nil || c.reapInterval <= 0 {
		return c, bad("reap-interval", "must be a positive duration such as 1s or 250ms")
	}
	if c.watchdogUSec, err = strconv.ParseUint(*v["watchdog-usec"], 10, 64); err != nil {
		return c, bad("watchdog-usec", "must be a whole number of microseconds, 0 for off")
	}
	c.expect = c.require
	if *v["expect"] != "" {
		if c.expect, err = strconv.Atoi(*v["expect"]); err != nil || c.expect < 0 {
			return c, bad("expect", "must be a whole number, 0 or more")
		}
	}
	if c.agentBind = *v["agent-bind"]; c.agentBind != "" {
		if _, _, err := net.SplitHostPort(c.agentBind); err != nil {
			return c, bad("agent-bind", "must be host:port, such as 127.0.0.1:8002")
		}
	}
	for _, q := range queues.vals {
		addr, err := backlog.ParseAddr(q)
		if err != nil {
			where := "--listen-queue"
			if fromEnv["listen-queue"] && !fromFlag["listen-queue"] {
				where = envName("listen-queue")
			}
			return c, &usageError{fmt.Sprintf("%s %q: %v", where, q, err)}
		}
		c.listenQueues = append(c.listenQueues, addr)
	}
	switch c.agentWeight = *v["agent-weight"]; c.agentWeight {
	case weightByCapacity:
	case weightByQueue:
		if len(c.listenQueues) == 0 {
			return c, bad("agent-weight", "needs at least one --listen-queue to weigh by")
		}
	default:
		return c, bad("agent-weight", "must be capacity or queue")
	}
	if c.agentFloor, err = strconv.Atoi(*v["agent-weight-floor"]); err != nil || c.agentFloor < 0 || c.agentFloor > 100 {
		return c, bad("agent-weight-floor", "must be a whole percentage from 0 to 100")
	}
	if c.addressFile = *v["address-file"]; c.addressFile != "" {
		if fi, err := os.Stat(filepath.Dir(c.addressFile)); err != nil || !fi.IsDir() {
			return c, bad("address-file", "its directory does not exist")
		}
		if fi, err := os.Stat(c.addressFile); err == nil && fi.IsDir() {
			return c, bad("address-file", "is a directory; name a file")
		}
	}
	switch c.systemdReady = *v["systemd-ready"]; c.systemdReady {
	case readyWhenListening, readyWhenWorkers:
	default:
		return c, bad("systemd-ready", "must be listening or workers")
	}
	return c, nil
}

// envName is a flag's environment twin: --socket-mode is NOTIFYD_SOCKET_MODE.
// listenConfig describes the notify socket notifyd creates, at start and
// again whenever its file is removed.
func (c config) listenConfig() protocol.ListenConfig {
	return protocol.ListenConfig{Path: c.socket, Mode: c.socketMode, GID: c.socketGID}
}

func envName(flagName string) string {
	return "NOTIFYD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
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

func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `notifyd: a health check for pre-fork servers that their own workers cannot block

Workers send sd_notify messages (READY=1, STOPPING=1, ...) to notifyd's socket;
notifyd answers HTTP with 200 while at least --require of them are ready.

Usage: notifyd [flags]

Every flag has an environment twin: --require is NOTIFYD_REQUIRE. A flag wins
over its variable.

`)
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%-18s %s (default %q)\n", f.Name, f.Usage, f.DefValue)
	})
}
