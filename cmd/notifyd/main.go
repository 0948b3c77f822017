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
	"strings"

	"github.com/notifyd/notifyd/internal/footprint"
)

func main() {
	footprint.Set()
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
	case errors.As(err, &usage):
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, "notifyd:", line)
		}
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		os.Exit(1)
	}
}
