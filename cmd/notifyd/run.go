package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/internal/addrfile"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// run starts notifyd and blocks until SIGINT or SIGTERM, or until one of its
// parts fails. A second signal during shutdown ends the process at once.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stdout)
	if err != nil {
		return err
	}
	log := slog.New(newLogHandler(stderr, cfg.logFormat, cfg.logLevel))

	// A reload signal must never end notifyd: the seed died of it.
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Caught from the start, so that a drain signal never meets the default
	// action, which would end the process. The buffer holds more than the
	// runtime hands over at once, so that none is dropped.
	drains := make(chan os.Signal, 16)
	signal.Notify(drains, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(drains)

	// Opened first: notifyd whose process is already gone starts nothing.
	var watch *registry.ExitWatch
	if cfg.exitWith != 0 {
		if watch, err = registry.WatchExit(cfg.exitWith); errors.Is(err, registry.ErrNoProcess) {
			return &usageError{fmt.Sprintf("--exit-with %d: no such process", cfg.exitWith)}
		} else if errors.Is(err, registry.ErrThread) {
			return &usageError{fmt.Sprintf("--exit-with %d: %v; name the process", cfg.exitWith, err)}
		} else if err != nil {
			return fmt.Errorf("--exit-with %d: %w", cfg.exitWith, err)
		}
		defer watch.Close()
	}

	inherited, err := takeInherited(log)
	if err != nil {
		return err
	}
	if inherited.notify == nil {
		if err := checkNotSystemdSocket(cfg.socket); err != nil {
			return err
		}
	}
	// The sockets come first: a path that is in use stops notifyd before it
	// touches the state directory. Datagrams that arrive meanwhile queue.
	conn, ln, err := listen(cfg, inherited, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer ln.Close()

	// The listen queues are sampled while every worker is busy, which the
	// registry tells as it happens.
	var (
		queues  *backlog.Reader
		sampler *backlog.Sampler
		onBusy  func()
	)
	if len(cfg.listenQueues) > 0 {
		queues = backlog.NewReader(cfg.listenQueues)
		sampler = backlog.NewSampler(queues, log.With("component", "backlog"))
		onBusy = sampler.Wake
	}
	notifier := newSystemdNotifier(cfg, log.With("component", "systemd"))
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
		Logger:       log.With("component", "registry"),
		OnChange:     notifier.poke,
		OnAllBusy:    onBusy,
	})
	if errors.Is(err, registry.ErrDirInUse) {
		// A setting to change, as a socket in use is: managed mode then
		// stops restarting notifyd and says why.
		return &usageError{fmt.Sprintf("--dir %q: %v", cfg.dir, err)}
	}
	if err != nil {
		return err
	}
	defer reg.Close()
	notifier.summary = reg.Summary

	srv := protocol.NewServer(conn, reg, log.With("component", "protocol"))
	handler := httpapi.NewHandler(httpapi.Config{
		Registry: reg, Required: cfg.require, MessageCounts: srv.Counts, Queues: queues,
	})
	httpLog := log.With("component", "http")
	parts := []func(context.Context) error{
		// The registry and the datagram loop stop together, and the state
		// directory is let go of at once, before the HTTP connections
		// already accepted have all been answered: a successor may take the
		// directory without waiting for them.
		func(ctx context.Context) error {
			defer reg.ReleaseDir()
			return runAll(ctx, reg.Run, srv.Serve)
		},
		httpapi.NewServer(ln, handler, httpLog).Serve,
		notifier.Run,
		drainSignals(reg, drains, log),
	}
	if sampler != nil {
		parts = append(parts, func(ctx context.Context) error { return sampler.Run(ctx, reg) })
	}
	if watch != nil {
		parts = append(parts, func(ctx context.Context) error {
			if exited, err := watch.Wait(ctx); exited {
				log.Info("the process notifyd exits with has exited; stopping", "exit_with", cfg.exitWith)
			} else if err != nil {
				return fmt.Errorf("--exit-with %d: %w", cfg.exitWith, err)
			}
			return nil
		})
	}

	started := []any{"socket", conn.Addr(), "bind", ln.Addr().String()}
	addrs := addrfile.Addresses{HTTP: ln.Addr().String(), Socket: conn.Addr()}
	if cfg.agentBind != "" {
		agent, err := net.Listen("tcp", cfg.agentBind)
		if err != nil {
			return fmt.Errorf("listen on --agent-bind %s: %w", cfg.agentBind, err)
		}
		defer agent.Close()
		addrs.Agent = agent.Addr().String()
		started = append(started, "agent", addrs.Agent)
		weigh := httpapi.AgentConfig{Source: reg, Required: cfg.require,
			Idle: cfg.weighByIdle, Floor: cfg.agentFloor, Log: httpLog}
		if cfg.weighByQueue {
			weigh.Queues = queues
		}
		parts = append(parts, httpapi.NewAgent(agent, weigh).Serve)
	}
	if cfg.addressFile != "" {
		// A file notifyd cannot replace, such as another user's in a
		// sticky directory, costs the launcher its addresses, never the
		// health check.
		if written, err := addrfile.Write(cfg.addressFile, addrs); err != nil {
			log.Error("address file not written; notifyd serves without it", "error", err)
		} else {
			defer written.Remove()
		}
	}
	log.Info("notifyd started", append(started, "require", cfg.require, "expect", cfg.expect,
		"dir", cfg.dir, "ready", reg.Summary().Ready, "draining", reg.Draining())...)
	err = runAll(ctx, parts...)
	stop() // from here on, a second signal ends the process
	log.Info("notifyd stopped", "ready", reg.Summary().Ready, counters("messages", srv.Counts()))
	return err
}

// drainTie is how long after a SIGUSR1 notifyd waits for a SIGUSR2 that
// may have been sent before it, before it drains. The kernel keeps one
// pending bit per signal, and hands two pending signals over lowest number
// first, as the Go runtime does with those it has not delivered yet:
// SIGUSR2 then SIGUSR1, sent together, arrive as SIGUSR1 then SIGUSR2. Such
// a pair is a tie, and the drain wins it. A drain takes effect drainTie
// late, so an undrain sent once the drain shows is never taken for a tie.
const drainTie = 50 * time.Millisecond

// drainSignals drains the instance on SIGUSR1 and undrains it on SIGUSR2,
// in the order they arrive; a SIGUSR2 that arrives within drainTie of a
// SIGUSR1 leaves the instance drained.
func drainSignals(reg *registry.Registry, signals <-chan os.Signal, log *slog.Logger) func(context.Context) error {
	return func(ctx context.Context) error {
		for {
			var sig os.Signal
			select {
			case <-ctx.Done():
				return nil
			case sig = <-signals:
			}
			draining, tie, n := false, false, 1
			for {
				if sig == syscall.SIGUSR1 {
					draining = true
				} else if draining {
					tie = true
				}
				next, ok := nextSignal(ctx, signals, draining)
				if !ok {
					break
				}
				sig, n = next, n+1
			}
			// A drain mark that cannot be saved is logged by the registry;
			// the drain itself has taken effect. The line comes after it, so
			// that whoever reads it finds the health answer changed.
			reg.SetDraining(draining)
			log.Debug("drain signals", "signals", n, "draining", draining, "tie", tie)
		}
	}
}

// nextSignal returns a signal that has arrived already, or, after a drain,
// one that arrives within drainTie; ok is false when there is none.
func nextSignal(ctx context.Context, signals <-chan os.Signal, draining bool) (os.Signal, bool) {
	select {
	case sig := <-signals:
		return sig, true
	default:
	}
	if !draining {
		return nil, false
	}
	t := time.NewTimer(drainTie)
	defer t.Stop()
	select {
	case sig := <-signals:
		return sig, true
	case <-ctx.Done():
	case <-t.C:
	}
	// One that arrived as the timer fired is taken too: late is a tie.
	select {
	case sig := <-signals:
		return sig, true
	default:
		return nil, false
	}
}

// runAll runs each part in its own goroutine until ctx is cancelled or one
// part returns, then cancels the rest and waits for them all. It returns the
// first error.
func runAll(ctx context.Context, parts ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, part := range parts {
		wg.Go(func() {
			err := part(ctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				once.Do(func() { first = err })
			}
			cancel()
		})
	}
	wg.Wait()
	return first
}
