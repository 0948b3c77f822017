package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

func TestBadFlagsStopStartWithOneLine(t *testing.T) {
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
		{"filename without placeholder", []string{"--filename", "worker"}, "", `--filename "worker": must contain exactly one {} placeholder for the pid`},
		{"filename with a slash", []string{"--filename", "a/{}"}, "", `--filename "a/{}"`},
		{"negative require", []string{"--require", "-1"}, "", `--require "-1": must be a whole number, 0 or more`},
		{"require not a number", []string{"--require", "two"}, "", `--require "two"`},
		{"bad log level", []string{"--log-level", "loud"}, "", `--log-level "loud"`},
		{"bad access", []string{"--access", "everyone"}, "", `--access "everyone": must be same-uid, root or all`},
		{"bad socket mode", []string{"--socket-mode", "999"}, "", `--socket-mode "999"`},
		{"bad bind", []string{"--bind", "8001"}, "", `--bind "8001"`},
		{"bad reap interval", []string{"--reap-interval", "0s"}, "", `--reap-interval "0s"`},
		{"unknown flag", []string{"--frobnicate"}, "", "flag provided but not defined: -frobnicate"},
		{"bad agent weight", []string{"--agent-weight", "busy"}, "", `--agent-weight "busy": must be capacity, idle, queue, or idle,queue`},
		{"agent weight twice", []string{"--agent-weight", "idle,idle"}, "", `--agent-weight "idle,idle": must be capacity, idle, queue, or idle,queue`},
		{"agent weight queue without a queue", []string{"--agent-weight", "idle,queue"}, "", `--agent-weight "idle,queue": needs at least one --listen-queue to weigh by`},
		{"bad environment twin", nil, "NOTIFYD_REQUIRE=lots", `NOTIFYD_REQUIRE "lots": must be a whole number, 0 or more`},
		// --exit-with refuses what is not a live process before the socket is made.
		{"exit-with not a number", []string{"--exit-with", "master"}, "", `--exit-with "master": must be a process id, from 1 to 4194303`},
		{"exit-with zero", []string{"--exit-with", "0"}, "", `--exit-with "0": must be a process id`},
		{"exit-with negative twin", nil, "NOTIFYD_EXIT_WITH=-5", `NOTIFYD_EXIT_WITH "-5": must be a process id`},
		{"exit-with no such process", []string{"--exit-with", dead}, "", "--exit-with " + dead + ": no such process"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "notifyd"), append([]string{"--dir", dir, "--socket", dir + "/s"}, tt.args...)...)
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
				t.Fatal("a socket was created despite the bad flag")
			}
		})
	}
}

func TestCheckReportsEveryMistakeAndTouchesNothing(t *testing.T) {
	dir := shortDir(t)
	notifyd := filepath.Join(bin, "notifyd")
	base := []string{"--check", "--dir", dir, "--socket", dir + "/s", "--address-file", dir + "/addr.json"}

	out, err := exec.Command(notifyd, append(base, "--require", "x", "--filename", "w", "--bind", "localhost")...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("--check with three mistakes: exit %v, want status 2; output %q", err, out)
	}
	want := []string{`notifyd: --bind "localhost": `, `notifyd: --require "x": `, `notifyd: --filename "w": `}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("output %q, want a line for each of %d mistakes", out, len(want))
	}
	for i, line := range lines {
		if !strings.HasPrefix(line, want[i]) {
			t.Errorf("line %d = %q, want it to start %q", i, line, want[i])
		}
	}

	out, err = exec.Command(notifyd, append(base, "--bind", "127.0.0.1:0")...).CombinedOutput()
	if err != nil || string(out) != "notifyd: the configuration is valid\n" {
		t.Fatalf("--check with good flags = %v, %q", err, out)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("--check left %v in %s (%v), want nothing", entries, dir, err)
	}
}

func TestFlagWinsOverEnvironment(t *testing.T) {
	dir := shortDir(t)
	t.Setenv("NOTIFYD_REQUIRE", "5")
	d := startNotifyd(t, dir, "--require", "0")
	wantHealth(t, d, 200, "0 workers ready\n")
}

func TestEnvironmentTwinIsUsed(t *testing.T) {
	dir := shortDir(t)
	t.Setenv("NOTIFYD_REQUIRE", "0")
	d := startNotifyd(t, dir)
	wantHealth(t, d, 200, "0 workers ready\n")
}

func TestNotifyRegistersAndHealthFlips(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	wantHealth(t, d, 500, "0 workers ready\n")

	a, b := sleeper(t), sleeper(t)
	for _, w := range []*exec.Cmd{a, b} {
		if code, out := notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid)); code != 0 {
			t.Fatalf("notify exit %d: %s", code, out)
		}
	}
	// notify waits for the barrier, so the registry has applied both.
	wantHealth(t, d, 200, "2 workers ready\n")
	want := []int{a.Process.Pid, b.Process.Pid}
	slices.Sort(want)
	if got := stateFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("state files for %v, want %v", got, want)
	}

	if code, out := notify(t, "--socket", d.socket, "--stopping", "--pid", strconv.Itoa(a.Process.Pid)); code != 0 {
		t.Fatalf("notify exit %d: %s", code, out)
	}
	wantHealth(t, d, 500, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{b.Process.Pid}) {
		t.Fatalf("state files for %v, want [%d]", got, b.Process.Pid)
	}
}

func TestEveryMethodAndPathAnswersHealthWithCurl(t *testing.T) {
	curl := need(t, "curl")
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))
	for _, tt := range []struct{ method, path string }{
		{"GET", "/"}, {"OPTIONS", "/"}, {"POST", "/healthz"}, {"PUT", "/a/b?c=d"}, {"DELETE", "/x"},
	} {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			out, err := exec.Command(curl, "-s", "-X", tt.method, "-w", "\n%{http_code} %{content_type}",
				"http://"+d.addr+tt.path).Output()
			if err != nil {
				t.Fatal(err)
			}
			want := "1 workers ready\n\n200 text/plain; charset=utf-8"
			if string(out) != want {
				t.Fatalf("curl -X %s %s = %q, want %q", tt.method, tt.path, out, want)
			}
		})
	}
	out, err := exec.Command(curl, "-s", "-I", "http://"+d.addr+"/").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "HTTP/1.1 200") || !strings.Contains(string(out), "Cache-Control: no-store") {
		t.Fatalf("HEAD answer %q, want 200 with Cache-Control: no-store", out)
	}
}

func TestSystemdNotifyBarrierAndPid(t *testing.T) {
	sdNotify := need(t, "systemd-notify")
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	cmd := exec.Command(sdNotify, "--ready", "--pid="+strconv.Itoa(w.Process.Pid))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+d.socket)
	// systemd-notify waits up to 5 s for the barrier and exits 1 without it,
	// so exit 0 shows notifyd acknowledged the barrier.
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-notify: %v: %s", err, out)
	}
	wantHealth(t, d, 200, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files for %v, want [%d]", got, w.Process.Pid)
	}
}

func TestRestartAfterKill9KeepsLiveWorkersOnly(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	a, b := sleeper(t), sleeper(t)
	for _, w := range []*exec.Cmd{a, b} {
		notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))
	}
	wantHealth(t, d, 200, "2 workers ready\n")

	d.stop(t, syscall.SIGKILL)
	a.Process.Kill()
	a.Wait()

	d2 := startNotifyd(t, dir, "--require", "2")
	wantHealth(t, d2, 500, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{b.Process.Pid}) {
		t.Fatalf("state files for %v, want only the live worker [%d]", got, b.Process.Pid)
	}
}

func TestSigtermRemovesSocketAndKeepsStateFiles(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))

	// SIGHUP is ignored: notifyd keeps answering.
	d.cmd.Process.Signal(syscall.SIGHUP)
	wantHealth(t, d, 200, "1 workers ready\n")

	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("notifyd exit after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(d.socket); !os.IsNotExist(err) {
		t.Fatalf("socket file still there after SIGTERM: %v", err)
	}
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files for %v after SIGTERM, want [%d]", got, w.Process.Pid)
	}
}

func TestNotifyExitCodes(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	pid := strconv.Itoa(w.Process.Pid)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"processed", []string{"--socket", d.socket, "--ready", "--pid", pid}, 0, ""},
		{"processed but rejected by notifyd", []string{"--socket", d.socket, "--ready", "--pid", "4000000"}, 0, ""},
		{"no block", []string{"--socket", d.socket, "--no-block", "--status", "busy", "--pid", pid}, 0, ""},
		{"socket missing", []string{"--socket", dir + "/missing.sock", "--ready"}, 1, "does not exist"},
		{"not a socket", []string{"--socket", "/etc/hostname", "--ready"}, 1, "is not a socket"},
		{"nothing to send", []string{"--socket", d.socket}, 2, "nothing to send"},
		{"bad value", []string{"--socket", d.socket, "READY=2"}, 2, `READY="2"`},
		{"bad pid", []string{"--socket", d.socket, "--ready", "--pid", "abc"}, 2, `--pid "abc"`},
		{"conflicting flags", []string{"--socket", d.socket, "--ready", "--stopping"}, 2, "exclude each other"},
		{"unknown flag", []string{"--bogus"}, 2, "-bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := notify(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("notify %v = %d %q, want %d containing %q", tt.args, code, out, tt.code, tt.want)
			}
			if tt.code != 0 && strings.Count(out, "\n") != 1 {
				t.Fatalf("error output %q is not one line", out)
			}
		})
	}
	wantHealth(t, d, 200, "1 workers ready\n")
}

// net/http answers "OPTIONS *" itself unless told not to; notifyd must give
// it the health answer like any other request.
func TestOptionsStarAnswersHealth(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	conn, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "OPTIONS * HTTP/1.1\r\nHost: notifyd\r\nConnection: close\r\n\r\n")
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 500 ") || !strings.HasSuffix(string(b), "\r\n\r\n0 workers ready\n") {
		t.Fatalf("OPTIONS * answered %q, want 500 with \"0 workers ready\\n\"", b)
	}
}

// A drain rides alone: combined with a worker's keys it is rejected whole,
// so a message rejected for its pid cannot drain the instance.
func TestDrainWithWorkerKeysIsRejectedWhole(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "0")
	c, err := protocol.Dial(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send([]byte("READY=1\nPID=4000000\nX_NOTIFYD_DRAIN=1"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	wantHealth(t, d, 200, "0 workers ready\n")
	if _, err := os.Stat(filepath.Join(dir, ".notifyd.draining")); !os.IsNotExist(err) {
		t.Fatalf("drain mark written for a rejected message: %v", err)
	}
}
