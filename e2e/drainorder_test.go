package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestDrainSignalsSentTogetherLeaveItDrained sends SIGUSR2 then SIGUSR1 at
// once, ten times: the kernel hands them over SIGUSR1 first, yet notifyd
// ends drained every time, and takes both signals.
func TestDrainSignalsSentTogetherLeaveItDrained(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "0")
	pid := strconv.Itoa(d.cmd.Process.Pid)
	for i := range 10 {
		seen := drainSignalsTaken(d)
		sendSignals(t, pid, "USR2", "USR1")
		waitFor(t, "both drain signals", func() bool { return drainSignalsTaken(d) == seen+2 })
		if h := d.health(t); h.body != "0 workers ready, draining\n" {
			t.Fatalf("round %d: health %d %q after USR2 then USR1, want draining", i, h.code, h.body)
		}
		mustNotify(t, "--socket", d.socket, "--undrain")
		wantHealth(t, d, 200, "0 workers ready\n")
	}
}

// TestDrainSignalStormEndsInItsLastSignal sends a storm of drain and undrain
// signals that ends in SIGUSR1: notifyd ends drained.
func TestDrainSignalStormEndsInItsLastSignal(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "0")
	pid := strconv.Itoa(d.cmd.Process.Pid)
	var storm []string
	for range 100 {
		storm = append(storm, "USR1", "USR2")
	}
	sendSignals(t, pid, append(storm, "USR1")...)
	waitHealth(t, d, 500, "0 workers ready, draining\n")
	// The last signal taken is the storm's last, or a SIGUSR2 that came
	// with it; nothing is left to take once the kernel holds none.
	waitFor(t, "no drain signal pending", func() bool { return !signalsPending(t, d.cmd.Process.Pid) })
	var last string
	for line := range strings.SplitSeq(d.log.String(), "\n") {
		if strings.Contains(line, `msg="drain signals"`) {
			last = line
		}
	}
	if !strings.Contains(last, "draining=true") {
		t.Fatalf("last drain signal taken: %q, want it to leave notifyd draining", last)
	}
	wantHealth(t, d, 500, "0 workers ready, draining\n")
}

// drainSignalsTaken is how many drain signals notifyd has taken so far, as
// its log says.
func drainSignalsTaken(d *daemon) int {
	n := 0
	for line := range strings.SplitSeq(d.log.String(), "\n") {
		if _, rest, ok := strings.Cut(line, `msg="drain signals" signals=`); ok {
			count, _, _ := strings.Cut(rest, " ")
			c, _ := strconv.Atoi(count)
			n += c
		}
	}
	return n
}

// sendSignals sends the signals to pid from one shell, one kill after the
// other, as an operator's script does.
func sendSignals(t *testing.T, pid string, signals ...string) {
	t.Helper()
	var script strings.Builder
	for _, sig := range signals {
		script.WriteString("kill -" + sig + " " + pid + "\n")
	}
	if out, err := exec.Command("sh", "-c", script.String()).CombinedOutput(); err != nil {
		t.Fatalf("send %v: %v: %s", signals, err, out)
	}
}

// signalsPending reports whether the kernel still holds a SIGUSR1 or SIGUSR2
// for pid, for the process or any of its threads.
func signalsPending(t *testing.T, pid int) bool {
	t.Helper()
	const mask = 1<<(syscall.SIGUSR1-1) | 1<<(syscall.SIGUSR2-1)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread has exited
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			key, value, _ := strings.Cut(line, ":")
			if key != "SigPnd" && key != "ShdPnd" {
				continue
			}
			bits, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
			if err != nil {
				t.Fatalf("%s of %d: %q", key, pid, value)
			}
			if bits&mask != 0 {
				return true
			}
		}
	}
	return false
}
