package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// The --systemd-ready gates: when notifyd tells systemd READY=1.
const (
	readyWhenListening = "listening" // once the socket, the state and HTTP are up
	readyWhenWorkers   = "workers"   // once --require workers are ready, too
)

// statusInterval bounds how often notifyd sends systemd a STATUS= line, so a
// burst of worker churn costs systemd a few messages, not one per worker.
const statusInterval = 250 * time.Millisecond

// inheritedSockets are the sockets systemd passed by socket activation.
type inheritedSockets struct {
	notify *os.File // the datagram socket workers notify
	http   *os.File // the HTTP listener
}

// takeInherited sorts the sockets from LISTEN_FDS: by FileDescriptorName=
// ("notify", "http") where systemd names them, and by socket type where it
// does not. Each descriptor must be open, and a socket of its kind: a bound
// Unix datagram socket for notify, a listening stream socket for http; the
// error names the descriptor at fault. Sockets meant for another process
// (LISTEN_PID is not notifyd's) are left alone, with a line in the log. It
// unsets the LISTEN_* variables.
func takeInherited(log *slog.Logger) (inheritedSockets, error) {
	var s inheritedSockets
	count, pid, names := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDNAMES")
	for _, v := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	if count == "" {
		return s, nil
	}
	if pid != strconv.Itoa(os.Getpid()) {
		log.Warn("LISTEN_FDS is not for notifyd: LISTEN_PID names another process; not using the sockets it passes",
			"listen_pid", pid, "pid", os.Getpid())
		return s, nil
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 || n > 2 {
		return s, fmt.Errorf("socket activation: LISTEN_FDS=%q: notifyd takes one or two sockets, notify and http", count)
	}
	named := strings.Split(names, ":")
	for i := range n {
		fd, name := listenFDsStart+i, ""
		if i < len(named) {
			name = named[i]
		}
		slot, err := classify(fd, name)
		if err != nil {
			s.close()
			return inheritedSockets{}, err
		}
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), slot)
		switch {
		case slot == "notify" && s.notify == nil:
			s.notify = f
		case slot == "http" && s.http == nil:
			s.http = f
		default:
			f.Close()
			s.close()
			return inheritedSockets{}, fmt.Errorf("socket activation: more than one %s socket passed", slot)
		}
	}
	return s, nil
}

// listenFDsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

func (s inheritedSockets) close() {
	for _, f := range []*os.File{s.notify, s.http} {
		if f != nil {
			f.Close()
		}
	}
}

// classify says which socket descriptor fd is: its name when systemd gave
// one, else by its type; and checks that it is what that socket must be.
func classify(fd int, name string) (string, error) {
	at := fmt.Sprintf("socket activation: descriptor %d", fd)
	if name != "" {
		at += fmt.Sprintf(" (%s)", name)
	}
	// A passed descriptor survived exec, so it is not close-on-exec; one
	// that is was opened by notifyd itself, in the place of one that was
	// not passed.
	if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC != 0 {
		return "", fmt.Errorf("%s is not open: nothing was passed there", at)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return "", fmt.Errorf("%s is not a socket: %w", at, err)
	}
	switch name {
	case "notify", "http":
	case "":
		switch typ {
		case unix.SOCK_DGRAM:
			name = "notify"
		case unix.SOCK_STREAM:
			name = "http"
		default:
			return "", fmt.Errorf("%s is neither a datagram nor a stream socket", at)
		}
	default:
		return "", fmt.Errorf("%s: notifyd takes sockets named notify and http", at)
	}
	if name == "notify" {
		domain, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		if typ != unix.SOCK_DGRAM || domain != unix.AF_UNIX {
			return "", fmt.Errorf("%s is not a datagram socket: the notify socket is a Unix datagram socket", at)
		}
		// An unbound socket's address reads as an empty abstract name.
		sa, err := unix.Getsockname(fd)
		if ua, ok := sa.(*unix.SockaddrUnix); err != nil || !ok || ua.Name == "" || ua.Name == "@" {
			return "", fmt.Errorf("%s is not bound to an address: workers could not reach it", at)
		}
		return name, nil
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if typ != unix.SOCK_STREAM || err != nil || listening != 1 {
		return "", fmt.Errorf("%s is not a listening stream socket: the http socket must be listening", at)
	}
	return name, nil
}

// checkNotSystemdSocket refuses a --socket that is systemd's own notification
// socket: notifyd would read what its workers' service manager should get,
// and tell systemd about itself on its own socket.
func checkNotSystemdSocket(socket string) error {
	sd := os.Getenv("NOTIFY_SOCKET")
	if sd == "" {
		return nil
	}
	same := sd == socket
	if !strings.HasPrefix(sd, "@") && !strings.HasPrefix(socket, "@") {
		a, err1 := filepath.Abs(sd)
		b, err2 := filepath.Abs(socket)
		same = err1 == nil && err2 == nil && a == b
	}
	if same {
		return &usageError{fmt.Sprintf("--socket %q is $NOTIFY_SOCKET, systemd's own notification socket; give notifyd a socket of its own", socket)}
	}
	return nil
}

// listen opens the notify socket and the HTTP listener, taking either from
// systemd when it passed them.
func listen(cfg config, inherited inheritedSockets, log *slog.Logger) (*protocol.Conn, net.Listener, error) {
	var conn *protocol.Conn
	var err error
	if inherited.notify != nil {
		conn, err = protocol.FileConn(inherited.notify)
		inherited.notify.Close()
		if err == nil {
			log.Info("using the notify socket passed by systemd", "socket", conn.Addr())
		}
	} else if conn, err = protocol.Listen(cfg.listenConfig()); errors.Is(err, protocol.ErrInUse) {
		err = fmt.Errorf("%w; stop it or choose another --socket", err)
	} else if err == nil {
		if n, short := protocol.ShortQueue(); short {
			log.Info("short notify socket queue: a burst of workers waits for room; raise net.unix.max_dgram_qlen before notifyd starts",
				"net.unix.max_dgram_qlen", n, "systemd_sets", protocol.SystemdQueueLength)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	var ln net.Listener
	if inherited.http != nil {
		ln, err = net.FileListener(inherited.http)
		inherited.http.Close()
		if err != nil {
			err = fmt.Errorf("use the HTTP socket passed by systemd: %w", err)
		}
	} else if ln, err = net.Listen("tcp", cfg.bind); err != nil {
		err = fmt.Errorf("listen on --bind %s: %w", cfg.bind, err)
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ln, nil
}

// systemdNotifier tells systemd how notifyd is doing when it runs as a
// Type=notify service, or for the gunicorn master in managed mode: READY=1
// by the --systemd-ready gate, RELOADING=1 (with MONOTONIC_USEC) when an
// instance reload begins and READY=1 when it ends, a STATUS= line when the
// count changes, WATCHDOG=1 when systemd asks for it, and STOPPING=1 at
// shutdown. Gate and reload changes are sent at once; a count that only
// changed waits for statusInterval. Outside systemd it does nothing.
type systemdNotifier struct {
	log       *slog.Logger
	gate      string
	required  int
	changed   chan registry.Summary // the newest summary not yet taken
	ready     bool
	reloading bool
}

func newSystemdNotifier(cfg config, log *slog.Logger) *systemdNotifier {
	return &systemdNotifier{
		log:      log,
		gate:     cfg.systemdReady,
		required: cfg.require,
		changed:  make(chan registry.Summary, 1),
	}
}

// enabled reports whether notifyd runs under a service manager that listens.
func (n *systemdNotifier) enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// poke hands Run the registry's new summary, in place of one Run has not
// taken yet. It never blocks: the registry calls it under its lock, one call
// at a time, so after the drain the channel has room.
func (n *systemdNotifier) poke(s registry.Summary) {
	select {
	case <-n.changed:
	default:
	}
	n.changed <- s
}

// Run reports to systemd until ctx is cancelled, then sends STOPPING=1.
func (n *systemdNotifier) Run(ctx context.Context) error {
	if !n.enabled() {
		<-ctx.Done()
		return nil
	}
	var watchdog <-chan time.Time
	if every, err := sddaemon.SdWatchdogEnabled(false); err != nil {
		n.log.Warn("systemd watchdog settings not understood; no watchdog pings", "error", err)
	} else if every > 0 {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		watchdog = t.C
	}
	// The registry published its first summary when it was made.
	var s registry.Summary
	select {
	case s = <-n.changed:
	case <-ctx.Done():
		n.send("STOPPING=1")
		return nil
	}
	n.report(s)
	var (
		last    = time.Now()
		pending <-chan time.Time // set while a change waits for statusInterval
	)
	for {
		select {
		case <-ctx.Done():
			n.send("STOPPING=1")
			return nil
		case <-watchdog:
			n.send("WATCHDOG=1")
		case s = <-n.changed:
			if n.turning(s) {
				pending, last = nil, time.Now()
				n.report(s)
			} else if pending == nil {
				pending = time.After(time.Until(last.Add(statusInterval)))
			}
		case <-pending:
			pending, last = nil, time.Now()
			n.report(s)
		}
	}
}

// turning reports whether s opens the gate, or begins or ends a reload:
// systemd hears of those at once.
func (n *systemdNotifier) turning(s registry.Summary) bool {
	return !n.ready && n.gateOpen(s) || n.reloading != s.Reload.Active
}

func (n *systemdNotifier) gateOpen(s registry.Summary) bool {
	return n.gate == readyWhenListening || s.Counted() >= n.required
}

// report sends the count of s, with READY=1 the first time the gate
// opens, RELOADING=1 when a reload begins and READY=1 again when it ends.
func (n *systemdNotifier) report(s registry.Summary) {
	state := fmt.Sprintf("STATUS=%d/%d workers ready", s.Ready, n.required)
	if s.Reload.Active {
		state = fmt.Sprintf("STATUS=reloading: %d/%d new workers ready, %d ready in all", s.Reload.Fresh, n.required, s.Ready)
	}
	switch {
	case s.Reload.Active && !n.reloading:
		n.reloading = true
		state = "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUSec(), 10) + "\n" + state
	case !s.Reload.Active && n.reloading:
		n.reloading, n.ready = false, true
		state = "READY=1\n" + state
	case !n.ready && n.gateOpen(s):
		n.ready = true
		state = "READY=1\n" + state
	}
	n.send(state)
}

// monotonicUSec is CLOCK_MONOTONIC in microseconds, which systemd wants
// with RELOADING=1.
func monotonicUSec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

func (n *systemdNotifier) send(state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil && !errors.Is(err, os.ErrNotExist) {
		n.log.Warn("could not notify systemd", "error", err)
	}
}
