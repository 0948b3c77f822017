package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// exitModes are the two ways notifyd learns of exits. The pidfd mode gets a
// sweep interval far longer than any test, so only the kernel's event can
// explain a drop; the sweep mode is the fallback for kernels without pidfd.
var exitModes = []struct {
	name string
	args []string
}{
	{"pidfd", []string{"--exit-detection", "pidfd", "--reap-interval", "1h"}},
	{"sweep", []string{"--exit-detection", "sweep", "--reap-interval", "100ms"}},
}

func TestSigkillDropsWorker(t *testing.T) {
	for _, mode := range exitModes {
		t.Run(mode.name, func(t *testing.T) {
			dir := shortDir(t)
			d := startNotifyd(t, dir, mode.args...)
			w := sleeper(t)
			notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))
			wantHealth(t, d, 200, "1 workers ready\n")

			w.Process.Kill()
			w.Wait()
			waitHealth(t, d, 500, "0 workers ready\n")
			inStep(t, d)
			if got := stateFiles(t, dir); len(got) != 0 {
				t.Fatalf("state files %v remain after the worker died", got)
			}
			if mode.name == "sweep" && !strings.Contains(d.log.String(), "exit detection by sweep") {
				t.Fatal("notifyd did not log that it sweeps")
			}
		})
	}
}

// zombieFamily starts a parent that will never reap its child, and returns
// the parent and the child's pid.
func zombieFamily(t *testing.T) (*exec.Cmd, int) {
	t.Helper()
	parent := exec.Command("sh", "-c", "sleep 1000 & echo $!; exec sleep 1000")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { parent.Process.Kill(); parent.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	return parent, child
}

func TestZombieIsNotCounted(t *testing.T) {
	for _, mode := range exitModes {
		t.Run(mode.name, func(t *testing.T) {
			dir := shortDir(t)
			d := startNotifyd(t, dir, mode.args...)
			_, child := zombieFamily(t)
			notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(child))
			wantHealth(t, d, 200, "1 workers ready\n")

			syscall.Kill(child, syscall.SIGKILL)
			waitHealth(t, d, 500, "0 workers ready\n")
			if state := procState(child); state != "Z" {
				t.Fatalf("child %d is in state %q, want a zombie (Z) for this test to mean anything", child, state)
			}
			inStep(t, d)
			if got := stateFiles(t, dir); len(got) != 0 {
				t.Fatalf("state files %v remain for a zombie", got)
			}
			// A zombie cannot register either.
			notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(child))
			wantHealth(t, d, 500, "0 workers ready\n")
		})
	}
}

func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

func TestRecoveryDropsReusedPid(t *testing.T) {
	dir := shortDir(t)
	live, reused := sleeper(t), sleeper(t)
	start := procStartTime(t, live.Process.Pid)
	write := func(pid int, startTime string) {
		body := fmt.Sprintf("PID=%d\nSTARTTIME=%s\nREADY_AT=2026-01-02T03:04:05Z\n", pid, startTime)
		if err := os.WriteFile(filepath.Join(dir, ".gunicorn.worker."+strconv.Itoa(pid)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(live.Process.Pid, start)
	write(reused.Process.Pid, "1") // a live pid, but not the process that registered
	write(4000000, "1")            // no such process

	d := startNotifyd(t, dir, "--require", "1")
	wantHealth(t, d, 200, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{live.Process.Pid}) {
		t.Fatalf("state files after recovery %v, want only [%d]", got, live.Process.Pid)
	}
}

func procStartTime(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])[19]
}

func TestHeartbeatExpiryAndRecovery(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	pid := strconv.Itoa(w.Process.Pid)
	notify(t, "--socket", d.socket, "--ready", "--pid", pid, "WATCHDOG_USEC=2000000")
	wantHealth(t, d, 200, "1 workers ready\n")

	waitHealth(t, d, 500, "0 workers ready\n") // no heartbeat within 2 s: hung
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("a hung worker keeps its state file; got %v", got)
	}
	notify(t, "--socket", d.socket, "--pid", pid, "WATCHDOG=1")
	wantHealth(t, d, 200, "1 workers ready\n")
}

func TestDefaultHeartbeatDeadline(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--watchdog-usec", "2000000")
	w := sleeper(t)
	notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))
	waitHealth(t, d, 500, "0 workers ready\n")
	notify(t, "--socket", d.socket, "--pid", strconv.Itoa(w.Process.Pid), "WATCHDOG=1")
	wantHealth(t, d, 200, "1 workers ready\n")
}
