// Command notifyd is a health check for pre-fork servers such as gunicorn that
// their own workers cannot block.
//
// Workers tell notifyd they are ready over a Unix datagram socket, in
// systemd's sd_notify protocol; notifyd keeps the ready set in memory, mirrors
// it as one state file per pid, drops a pid the moment its process exits, and
// answers HTTP with 200 while at least --require workers are ready.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
)

// gcPercent is notifyd's GOGC unless the environment sets one. Each health
// answer allocates a little, and with thousands of workers registered the
// live heap is large, so at Go's default of 100 the collector would mark it
// over and over under load: the answer's throughput at 10000 workers was 0.88
// of that at 1, and 0.98 with 400 (docs/PERFORMANCE.md). The price is a heap
// of up to five times the live one, a few tens of MB at 10000 workers.
const gcPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		os.Exit(1)
	}
}
