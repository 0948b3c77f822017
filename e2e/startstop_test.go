package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDuringStartupIsQuiet stops notifyd the moment its socket file
// exists, before it has finished starting, ten times: it stops within the
// deadline, and never re-creates the socket file it is removing.
func TestSIGTERMDuringStartupIsQuiet(t *testing.T) {
	for range 10 {
		dir := shortDir(t)
		d := launch(t, dir, nil, nil)
		waitFor(t, "the socket file", func() bool {
			_, err := os.Lstat(d.socket)
			return err == nil
		})
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("notifyd still runs 5 s after SIGTERM at startup\n%s", d.log.String())
		}
		if log := d.log.String(); strings.Contains(log, "re-creat") {
			t.Fatalf("notifyd re-created its socket file while stopping:\n%s", log)
		}
		if _, err := os.Lstat(d.socket); !os.IsNotExist(err) {
			t.Fatalf("socket file after the stop: %v", err)
		}
	}
}
