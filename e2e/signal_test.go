package e2e

import (
	"errors"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSecondSignalEndsTheDrain shows that a second SIGINT or SIGTERM ends
// notifyd at once while the first one's drain waits for an HTTP connection
// that still owes an answer: notifyd dies of the signal instead of
// finishing the drain and saying "notifyd stopped".
func TestSecondSignalEndsTheDrain(t *testing.T) {
	for name, sig := range map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT} {
		t.Run(name, func(t *testing.T) {
			// The drain waits for the held connection for a few seconds
			// only; should it end before the second signal is sent, the
			// case is tried again.
			for attempt := 1; !signalTwice(t, sig); attempt++ {
				if attempt == 3 {
					t.Fatal("the drain ended before the second signal, three times")
				}
			}
		})
	}
}

// signalTwice starts notifyd, holds a connection that has sent nothing,
// signals notifyd once and, while it drains, once more. It reports false
// when the drain ended before the second signal arrived.
func signalTwice(t *testing.T, sig syscall.Signal) bool {
	t.Helper()
	d := startNotifyd(t, shortDir(t))
	held, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// Connections are accepted in order: an answer on a later one shows
	// notifyd has accepted the held one, which the drain now waits for.
	d.health(t)
	d.cmd.Process.Signal(sig)
	waitFor(t, "the drain to begin", func() bool {
		return strings.Contains(d.log.String(), "notifyd stopping")
	})
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("notifyd did not exit after a second %v", sig)
	}
	var exit *exec.ExitError
	if !errors.As(d.err, &exit) {
		if strings.Contains(d.log.String(), "notifyd stopped") {
			return false
		}
		t.Fatalf("notifyd exit = %v, want death by %v", d.err, sig)
	}
	status := exit.Sys().(syscall.WaitStatus)
	if !status.Signaled() {
		if strings.Contains(d.log.String(), "notifyd stopped") {
			return false
		}
		t.Fatalf("notifyd exit = %v, want death by %v", d.err, sig)
	}
	if status.Signal() != sig {
		t.Fatalf("notifyd died of %v, want %v", status.Signal(), sig)
	}
	if strings.Contains(d.log.String(), "notifyd stopped") {
		t.Fatalf("notifyd finished its drain before the second %v ended it:\n%s", sig, d.log.String())
	}
	return true
}
