package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os/signal"
	"sync"
	"syscall"

	"github.com/notifyd/notifyd/httpapi"
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
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	// A reload signal must never end notifyd: the seed died of it.
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	inherited, err := takeInherited()
	if err != nil {
		return err
	}
	if inherited.notify == nil {
		if err := checkNotSystemdSocket(cfg.socket); err != nil {
			return err
		}
	}
	notifier := newSystemdNotifier(cfg, log.With("component", "systemd"))

	reg, err := registry.New(registry.Config{
		Dir:          cfg.dir,
		Filename:     cfg.filename,
		Access:       cfg.access,
		Detection:    cfg.detection,
		ReapInterval: cfg.reapInterval,
		WatchdogUSec: cfg.watchdogUSec,
		Logger:       log.With("component", "registry"),
		OnChange:     notifier.poke,
	})
	if err != nil {
		return err
	}
	defer reg.Close()
	notifier.summary = reg.Summary

	conn, ln, err := listen(cfg, inherited, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer ln.Close()

	log.Info("notifyd started", "socket", conn.Addr(), "bind", ln.Addr().String(),
		"require", cfg.require, "dir", cfg.dir, "ready", reg.Summary().Ready)

	srv := protocol.NewServer(conn, reg, log.With("component", "protocol"))
	health := httpapi.NewHealth(reg, cfg.require)
	err = runAll(ctx,
		reg.Run,
		srv.Serve,
		func(ctx context.Context) error { return httpapi.Serve(ctx, ln, health, log.With("component", "http")) },
		notifier.Run,
	)
	stop() // from here on, a second signal ends the process
	log.Info("notifyd stopped", "ready", reg.Summary().Ready, "messages", srv.Counts())
	return err
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
