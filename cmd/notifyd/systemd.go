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

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
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
// does not. It unsets the LISTEN_* variables.
func takeInherited() (inheritedSockets, error) {
	var s inheritedSockets
	for _, f := range activation.Files(true) {
		slot, err := classify(f)
		if err != nil {
			return s, err
		}
		switch {
		case slot == "notify" && s.notify == nil:
			s.notify = f
		case slot == "http" && s.http == nil:
			s.http = f
		default:
			return s, fmt.Errorf("socket activation: more than one %s socket passed", slot)
		}
	}
	return s, nil
}

func classify(f *os.File) (string, error) {
	switch name := f.Name(); name {
	case "notify", "http":
		return name, nil
	}
	typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return "", fmt.Errorf("socket activation: descriptor %s is not a socket: %w", f.Name(), err)
	}
	switch typ {
	case unix.SOCK_DGRAM:
		return "notify", nil
	case unix.SOCK_STREAM:
		return "http", nil
	}
	return "", fmt.Errorf("socket activation: descriptor %s is neither a datagram nor a stream socket", f.Name())
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
	} else if conn, err = protocol.Listen(cfg.listenConfig()); err == nil {
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
	summary   func() registry.Summary
	changed   chan struct{}
	ready     bool
	reloading bool
}

func newSystemdNotifier(cfg config, log *slog.Logger) *systemdNotifier {
	return &systemdNotifier{
		log:      log,
		gate:     cfg.systemdReady,
		required: cfg.require,
		changed:  make(chan struct{}, 1),
	}
}

// enabled reports whether notifyd runs under a service manager that listens.
func (n *systemdNotifier) enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// poke says the registry changed. It never blocks: it is called under the
// registry's lock.
func (n *systemdNotifier) poke(registry.Summary) {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// Run reports to systemd until ctx is cancelled, then sends STOPPING=1.
func (n *systemdNotifier) Run(ctx context.Context) error {
	if !n.enabled() {
		<-ctx.Done()
		return nil
	}
	var watchdog <-chan time.Time
	if every, err := daemon.SdWatchdogEnabled(false); err != nil {
		n.log.Warn("systemd watchdog settings not understood; no watchdog pings", "error", err)
	} else if every > 0 {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		watchdog = t.C
	}
	n.report()
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
		case <-n.changed:
			if n.turning(n.summary()) {
				pending, last = nil, time.Now()
				n.report()
			} else if pending == nil {
				pending = time.After(time.Until(last.Add(statusInterval)))
			}
		case <-pending:
			pending, last = nil, time.Now()
			n.report()
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

// report sends the current count, with READY=1 the first time the gate
// opens, RELOADING=1 when a reload begins and READY=1 again when it ends.
func (n *systemdNotifier) report() {
	s := n.summary()
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
	if _, err := daemon.SdNotify(false, state); err != nil && !errors.Is(err, os.ErrNotExist) {
		n.log.Warn("could not notify systemd", "error", err)
	}
}
