//go:build linux

// Command notify sends one sd_notify message to notifyd and waits until
// notifyd has processed it.
//
//	notify --ready                 # the calling process is ready
//	notify --stopping --pid 1234   # pid 1234 is going away
//	notify --status "warming up"
//
// It exits 0 once notifyd has processed the message (which does not mean it
// accepted it: rejections show in notifyd's log), 1 on an error, with a
// one-line reason, and 2 on a usage error.
//
// Its commands ask notifyd's HTTP side instead:
//
//	notify check                   # exit 0 when the health check answers 200
//	notify status                  # the workers at a glance
//	notify wait --ready 4 --fresh  # until 4 workers ready after the wait began
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	err := run(os.Args[1:], os.Stdout)
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "notify:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "notify:", err)
		os.Exit(1)
	}
}
