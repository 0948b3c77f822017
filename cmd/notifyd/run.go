package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/registry"
)

// run starts notifyd and blocks until SIGINT or SIGTERM, or until one of its
// parts fails. A second SIGINT or SIGTERM during the drain ends the process
// at once.
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
	// Once the first signal has begun the drain, the next one meets the
	// default action, which ends the process.
	defer context.AfterFunc(ctx, func() {
		stop()
		log.Info("notifyd stopping; a second SIGINT or SIGTERM ends it at once")
	})()

	d, err := newDaemon(cfg, log)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Run(ctx)
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
