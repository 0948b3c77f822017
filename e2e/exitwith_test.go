package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExitWithBadValues checks that --exit-with and NOTIFYD_EXIT_WITH refuse
// what is not a live process with one line, before making the socket.
func TestExitWithBadValues(t *testing.T) {
	dir := shortDir(t)
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := strconv.Itoa(gone.Process.Pid)
	tests := []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"not a number", []string{"--exit-with", "master"}, "", `--exit-with "master": must be a process id, a whole number above 0`},
		{"zero", []string{"--exit-with", "0"}, "", `--exit-with "0": must be a process id`},
		{"negative twin", nil, "NOTIFYD_EXIT_WITH=-5", `NOTIFYD_EXIT_WITH "-5": must be a process id`},
		{"no such process", []string{"--exit-with", dead}, "", "--exit-with " + dead + ": no such process"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "notifyd"), append([]string{"--dir", dir, "--socket", dir + "/s", "--bind", "127.0.0.1:0"}, tt.args...)...)
			cmd.Env = os.Environ()
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit = %v, want status 2; output %q", err, out)
			}
			lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tt.want) {
				t.Fatalf("output %q, want one line containing %q", out, tt.want)
			}
			if _, err := os.Stat(dir + "/s"); err == nil {
				t.Fatal("a socket was created despite the bad value")
			}
		})
	}
}

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
