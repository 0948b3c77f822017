package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExitWithFollowsTheProcess checks that notifyd keeps serving while the
// watched process lives, and stops cleanly, removing its socket, once it is
// killed.
func TestExitWithFollowsTheProcess(t *testing.T) {
	for _, how := range []string{"flag", "environment"} {
		t.Run(how, func(t *testing.T) {
			dir := shortDir(t)
			master := sleeper(t)
			var d *daemon
			if how == "flag" {
				d = startNotifyd(t, dir, "--exit-with", pidString(master), "--require", "0")
			} else {
				d = launch(t, dir, []string{"NOTIFYD_EXIT_WITH=" + pidString(master)}, nil, "--require", "0")
				d.waitStarted(t)
			}
			wantHealth(t, d, 200, "0 workers ready\n")
			select {
			case <-d.done:
				t.Fatalf("notifyd exited while the watched process lives: %v\n%s", d.err, d.log.String())
			case <-time.After(200 * time.Millisecond):
			}
			// Not reaped yet: a zombie has exited, and that is enough.
			master.Process.Signal(syscall.SIGKILL)
			select {
			case <-d.done:
			case <-time.After(20 * time.Second):
				t.Fatal("notifyd still runs after the watched process was killed")
			}
			if d.err != nil {
				t.Fatalf("notifyd exited with %v, want status 0\n%s", d.err, d.log.String())
			}
			if !strings.Contains(d.log.String(), "exit_with="+pidString(master)) {
				t.Fatalf("log does not say why notifyd stopped:\n%s", d.log.String())
			}
			if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
				t.Fatalf("socket file after the exit: %v", err)
			}
		})
	}
}
