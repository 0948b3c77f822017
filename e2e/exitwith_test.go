package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
			// A witness notifyd, started after this one, follows a process
			// killed at once: once it has stopped, this one's watch has had
			// as long to go wrong.
			witnessed := sleeper(t)
			witness := startNotifyd(t, shortDir(t), "--exit-with", pidString(witnessed), "--require", "0")
			witnessed.Process.Signal(syscall.SIGKILL)
			select {
			case <-witness.done:
			case <-time.After(20 * time.Second):
				t.Fatal("the witness notifyd still runs after its watched process was killed")
			}
			select {
			case <-d.done:
				t.Fatalf("notifyd exited while the watched process lives: %v\n%s", d.err, d.log.String())
			default:
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

// TestExitWithAndPidRefuseThreadsAndWrapping checks that --exit-with and
// notify --pid take only a process id: a value above the largest pid, such
// as 2^32 plus a live pid, which once wrapped to that pid, and a thread id,
// are usage errors that say what is wrong.
func TestExitWithAndPidRefuseThreadsAndWrapping(t *testing.T) {
	process, thread := threadOfProcess(t)
	wrapped := strconv.FormatUint(1<<32+uint64(process), 10)
	dir := shortDir(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"exit-with wraps", []string{"--exit-with", wrapped},
			`notifyd: --exit-with "` + wrapped + `": must be a process id, from 1 to 4194303`},
		{"exit-with thread", []string{"--exit-with", strconv.Itoa(thread)},
			fmt.Sprintf("notifyd: --exit-with %d: a thread id, not a process id: %d is a thread of process %d; name the process", thread, thread, process)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "notifyd"), append([]string{"--dir", dir, "--socket", dir + "/s", "--bind", "127.0.0.1:0"}, tt.args...)...)
			code, out := exitCode(t, cmd)
			if code != 2 || strings.TrimSpace(out) != tt.want {
				t.Fatalf("exit %d, output %q; want 2 and %q", code, out, tt.want)
			}
			if _, err := os.Lstat(dir + "/s"); !os.IsNotExist(err) {
				t.Fatalf("socket file after a refused start: %v", err)
			}
		})
	}
	t.Run("notify pid", func(t *testing.T) {
		for _, tt := range []struct{ pid, want string }{
			{wrapped, `notify: --pid "` + wrapped + `": must be a pid from 1 to 4194303, self or parent`},
			{strconv.Itoa(thread), fmt.Sprintf("notify: --pid %d: a thread id, not a process id: %d is a thread of process %d; name the process", thread, thread, process)},
		} {
			code, out := notify(t, "--socket", dir+"/none.sock", "--ready", "--pid", tt.pid)
			if code != 2 || strings.TrimSpace(out) != tt.want {
				t.Fatalf("notify --pid %s: exit %d, output %q; want 2 and %q", tt.pid, code, out, tt.want)
			}
		}
	})
}

// threadOfProcess starts a process with a second thread, and returns the
// process's pid and the thread's id.
func threadOfProcess(t *testing.T) (int, int) {
	t.Helper()
	cmd := exec.Command("python3", "-c", `import sys, threading
t = threading.Thread(target=sys.stdin.read)
t.start()
print(t.native_id, flush=True)
t.join()`)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	thread, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, thread
}
