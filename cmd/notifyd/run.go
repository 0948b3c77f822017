package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os/signal"
	"sync"
	"syscall"
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
