package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/internal/addrfile"
	"github.com/notifyd/notifyd/internal/exitwatch"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// daemon is notifyd with its parts wired. Each part has one owner: the
// protocol server owns the notify socket, the HTTP server its listener, the
// agent its listener; the daemon owns the servers, the registry, the exit
// watch and the drain signals, and Close releases them.
type daemon struct {
	cfg      config
	log      *slog.Logger
	drains   chan os.Signal     // SIGUSR1 and SIGUSR2
	watch    *exitwatch.Process // with --exit-with
	queues   *backlog.Reader    // with --listen-queue
	sampler  *backlog.Sampler   // with --listen-queue
	notifier *systemdNotifier
	reg      *registry.Registry
	notify   *protocol.Server
	http     *httpapi.Server
	agent    *httpapi.Agent // with --agent-bind
	addrs    addrfile.Addresses
	close    sync.Once
}

// newDaemon opens everything notifyd needs, in an order that touches
// nothing when an earlier step fails: the process --exit-with names, then
// the sockets (datagrams that arrive meanwhile queue), then the state
// directory. On an error it releases what it opened.
func newDaemon(cfg config, log *slog.Logger) (_ *daemon, err error) {
	// The drain signals are caught from the start, so that one never meets
	// the default action, which would end the process. The buffer holds
	// more than the runtime hands over at once, so that none is dropped.
	d := &daemon{cfg: cfg, log: log, drains: make(chan os.Signal, 16)}
	signal.Notify(d.drains, syscall.SIGUSR1, syscall.SIGUSR2)
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := d.watchExit(); err != nil {
		return nil, err
	}
	inherited, err := takeInherited(log)
	if err != nil {
		return nil, err
	}
	if inherited.notify == nil {
		if err := checkNotSystemdSocket(cfg.socket); err != nil {
			return nil, err
		}
	}
	conn, ln, err := listen(cfg, inherited, log)
	if err != nil {
		return nil, err
	}
	d.addrs = addrfile.Addresses{HTTP: ln.Addr().String(), Socket: conn.Addr()}
	if err := d.openRegistry(); err != nil {
		conn.Close()
		ln.Close()
		return nil, err
	}
	d.notify = protocol.NewServer(conn, d.reg, log.With("component", "protocol"))
	handler := httpapi.NewHandler(httpapi.Config{
		Registry: d.reg, Required: cfg.require, MessageCounts: d.notify.Counts, Queues: d.queues,
	})
	d.http = httpapi.NewServer(ln, handler, log.With("component", "http"))
	if err := d.listenAgent(); err != nil {
		return nil, err
	}
	return d, nil
}

// watchExit opens the process --exit-with names: notifyd whose process is
// already gone starts nothing.
func (d *daemon) watchExit() error {
	if d.cfg.exitWith == 0 {
		return nil
	}
	watch, err := exitwatch.Open(d.cfg.exitWith)
	if errors.Is(err, exitwatch.ErrNoProcess) {
		return &usageError{fmt.Sprintf("--exit-with %d: no such process", d.cfg.exitWith)}
	} else if errors.Is(err, exitwatch.ErrThread) {
		return &usageError{fmt.Sprintf("--exit-with %d: %v; name the process", d.cfg.exitWith, err)}
	} else if err != nil {
		return fmt.Errorf("--exit-with %d: %w", d.cfg.exitWith, err)
	}
	d.watch = watch
	return nil
}

// openRegistry opens the state directory. The listen queues are sampled
// while every worker is busy, which the registry tells as it happens; the
// systemd notifier hears every new summary.
func (d *daemon) openRegistry() error {
	cfg := d.cfg
	var onBusy func()
	if len(cfg.listenQueues) > 0 {
		d.queues = backlog.NewReader(cfg.listenQueues)
		d.sampler = backlog.NewSampler(d.queues, d.log.With("component", "backlog"))
		onBusy = d.sampler.Wake
	}
	d.notifier = newSystemdNotifier(cfg, d.log.With("component", "systemd"))
	reg, err := registry.New(registry.Config{
		Dir:          cfg.dir,
		Filename:     cfg.filename,
		Access:       cfg.access,
		Detection:    cfg.detection,
		ReapInterval: cfg.reapInterval,
		WatchdogUSec: cfg.watchdogUSec,
		Required:     cfg.require,
		Expected:     cfg.expect,
		MainPID:      cfg.mainPID,
		ReloadGrace:  cfg.reloadGrace,
		Logger:       d.log.With("component", "registry"),
		OnChange:     d.notifier.poke,
		OnAllBusy:    onBusy,
	})
	if errors.Is(err, registry.ErrDirInUse) {
		// A setting to change, as a socket in use is: managed mode then
		// stops restarting notifyd and says why.
		return &usageError{fmt.Sprintf("--dir %q: %v; give each notifyd its own --dir (in managed mode, its own healthcheck_directory)", cfg.dir, err)}
	}
	if err == nil && reg.Draining() {
		d.log.Info("draining, as before the restart", "component", "registry", "undrain", "notify --undrain, or SIGUSR2")
	}
	d.reg = reg
	return err
}

// listenAgent opens the agent-check listener of --agent-bind.
func (d *daemon) listenAgent() error {
	cfg := d.cfg
	if cfg.agentBind == "" {
		return nil
	}
	ln, err := net.Listen("tcp", cfg.agentBind)
	if err != nil {
		return fmt.Errorf("listen on --agent-bind %s: %w", cfg.agentBind, err)
	}
	d.addrs.Agent = ln.Addr().String()
	weigh := httpapi.AgentConfig{Source: d.reg, Required: cfg.require,
		Idle: cfg.weighByIdle, Floor: cfg.agentFloor, Log: d.log.With("component", "http")}
	if cfg.weighByQueue {
		weigh.Queues = d.queues
	}
	d.agent = httpapi.NewAgent(ln, weigh)
	return nil
}

// Run serves until ctx is cancelled or a part fails, then stops every part
// and waits for them. It writes the address file while it serves.
func (d *daemon) Run(ctx context.Context) error {
	parts := []func(context.Context) error{
		d.serveNotify, d.http.Serve, d.notifier.Run, drainSignals(d.reg, d.drains, d.log),
	}
	started := []any{"socket", d.addrs.Socket, "bind", d.addrs.HTTP}
	if d.agent != nil {
		parts = append(parts, d.agent.Serve)
		started = append(started, "agent", d.addrs.Agent)
	}
	if d.sampler != nil {
		parts = append(parts, func(ctx context.Context) error { return d.sampler.Run(ctx, d.reg) })
	}
	if d.watch != nil {
		parts = append(parts, d.exitWith)
	}
	if d.cfg.addressFile != "" {
		// A file notifyd cannot replace, such as another user's in a
		// sticky directory, costs the launcher its addresses, never the
		// health check.
		if written, err := addrfile.Write(d.cfg.addressFile, d.addrs); err != nil {
			d.log.Error("address file not written; notifyd serves without it", "error", err)
		} else {
			defer written.Remove()
		}
	}
	d.log.Info("notifyd started", append(started, "require", d.cfg.require, "expect", d.cfg.expect,
		"dir", d.cfg.dir, "ready", d.reg.Summary().Ready, "draining", d.reg.Draining())...)
	err := runAll(ctx, parts...)
	d.log.Info("notifyd stopped", "ready", d.reg.Summary().Ready, counters("messages", d.notify.Counts()))
	return err
}

// serveNotify runs the registry and the datagram loop, which stop together.
// The state directory is let go of at once, before the HTTP connections
// already accepted have all been answered: a successor may take the
// directory without waiting for them.
func (d *daemon) serveNotify(ctx context.Context) error {
	defer d.reg.ReleaseDir()
	return runAll(ctx, d.reg.Run, d.notify.Serve)
}

// exitWith returns once the process --exit-with names has exited.
func (d *daemon) exitWith(ctx context.Context) error {
	if exited, err := d.watch.Wait(ctx); exited {
		d.log.Info("the process notifyd exits with has exited; stopping", "exit_with", d.cfg.exitWith)
	} else if err != nil {
		return fmt.Errorf("--exit-with %d: %w", d.cfg.exitWith, err)
	}
	return nil
}

// Close releases every part. It is idempotent, and safe on a daemon that
// newDaemon built only in part.
func (d *daemon) Close() error {
	d.close.Do(func() {
		signal.Stop(d.drains)
		if d.agent != nil {
			d.agent.Close()
		}
		if d.http != nil {
			d.http.Close()
		}
		if d.notify != nil {
			d.notify.Close()
		}
		if d.reg != nil {
			d.reg.Close()
		}
		if d.watch != nil {
			d.watch.Close()
		}
	})
	return nil
}
