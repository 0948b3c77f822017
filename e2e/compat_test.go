package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/protocol"
)

// abstractName returns a fresh abstract socket name, "@nd-" and something
// no other run uses.
func abstractName() string {
	return fmt.Sprintf("@nd-%d-%x", os.Getpid(), rand.Uint64())
}

// dialNotifyd connects a protocol.Client to addr and closes it at the end of
// the test. The client attaches the test process's credentials explicitly.
func dialNotifyd(t *testing.T, addr string) *protocol.Client {
	t.Helper()
	c, err := protocol.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// barrier waits until notifyd has applied everything c sent before.
func barrier(t *testing.T, c *protocol.Client) {
	t.Helper()
	if err := c.Barrier(20 * time.Second); err != nil {
		t.Fatalf("barrier: %v", err)
	}
}

// pipeEnds is a pipe whose write end travels to notifyd. The read end stays
// here to watch for the hang-up that says every copy of the write end is
// closed.
type pipeEnds struct {
	r, w int
}

func newPipe(t *testing.T) *pipeEnds {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	e := &pipeEnds{r: p[0], w: p[1]}
	t.Cleanup(func() {
		unix.Close(e.r)
		e.closeWrite()
	})
	return e
}

// closeWrite closes this process's copy of the write end; it is idempotent.
func (e *pipeEnds) closeWrite() {
	if e.w >= 0 {
		unix.Close(e.w)
		e.w = -1
	}
}

// waitHangup waits until the read end of p reports POLLHUP: every copy of the
// write end, here and in notifyd, has been closed.
func waitHangup(t *testing.T, p *pipeEnds, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		fds := []unix.PollFd{{Fd: int32(p.r), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll %s: %v", what, err)
		}
		if n > 0 && fds[0].Revents&unix.POLLHUP != 0 {
			return
		}
		if n > 0 {
			t.Fatalf("%s: poll events %#x, want only POLLHUP", what, fds[0].Revents)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: notifyd never closed the descriptor (no POLLHUP)", what)
		}
	}
}

// fdCount is the number of descriptors process pid has open.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// fdList describes process pid's first 40 descriptors, for failure
// messages.
func fdList(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(dir)
	var b strings.Builder
	for i, e := range entries {
		if i == 40 {
			fmt.Fprintf(&b, "... and %d more\n", len(entries)-i)
			break
		}
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		fmt.Fprintf(&b, "%s -> %s\n", e.Name(), target)
	}
	return b.String()
}

// countLines counts the lines of log that match re.
func countLines(log string, re *regexp.Regexp) int {
	return len(re.FindAllStringIndex(log, -1))
}

var rejectedLine = regexp.MustCompile(`(?m)^.*msg="rejected notification".*$`)

func pidString(c *exec.Cmd) string { return strconv.Itoa(c.Process.Pid) }

func sortedPids(cmds ...*exec.Cmd) []int {
	var pids []int
	for _, c := range cmds {
		pids = append(pids, c.Process.Pid)
	}
	slices.Sort(pids)
	return pids
}

func TestAbstractSocketWithSystemdNotifyAndNotify(t *testing.T) {
	sdNotify := need(t, "systemd-notify")
	dir := shortDir(t)
	name := abstractName()
	// The flag package keeps the last --socket, so this one replaces the
	// harness's path.
	d := startNotifyd(t, dir, "--require", "2", "--socket", name)

	unixTable, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(strings.Split(string(unixTable), "\n"), func(l string) bool {
		f := strings.Fields(l)
		return len(f) > 0 && f[len(f)-1] == name
	}) {
		t.Fatalf("/proc/net/unix lists no socket %s", name)
	}

	a, b := sleeper(t), sleeper(t)
	cmd := exec.Command(sdNotify, "--ready", "--pid="+pidString(a))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+name)
	// systemd-notify exits 1 when the barrier is not acknowledged.
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("NOTIFY_SOCKET=%s systemd-notify --ready --pid=%d: %v: %s", name, a.Process.Pid, err, out)
	}
	wantHealth(t, d, 500, "1 workers ready\n")

	if code, out := notify(t, "--socket", name, "--ready", "--pid", pidString(b)); code != 0 || out != "" {
		t.Fatalf("notify --socket %s = %d %q, want 0 and no output", name, code, out)
	}
	wantHealth(t, d, 200, "2 workers ready\n")
	want := sortedPids(a, b)
	if got := stateFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("state files for %v, want %v", got, want)
	}

	// No file stands for the abstract socket, in the state directory or in
	// the working directory.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != ".notifyd.lock" { // notifyd's lock on its state directory
			names = append(names, e.Name())
		}
	}
	wantNames := []string{".gunicorn.worker." + strconv.Itoa(want[0]), ".gunicorn.worker." + strconv.Itoa(want[1])}
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Fatalf("directory %s holds %v, want only the state files %v", dir, names, wantNames)
	}
	for _, p := range []string{name, name[1:]} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a file %q exists in the working directory (%v)", p, err)
		}
	}
}

func TestGoSystemdSdNotify(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	t.Setenv("NOTIFY_SOCKET", d.socket)
	sent, err := sddaemon.SdNotify(false, "READY=1\nMAINPID="+pidString(w))
	if !sent || err != nil {
		t.Fatalf("SdNotify = (%v, %v), want (true, nil)", sent, err)
	}
	// SdNotify sends no barrier, so the registration shows up a little later.
	waitHealth(t, d, 200, "1 workers ready\n")
	inStep(t, d)
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files for %v, want [%d]", got, w.Process.Pid)
	}
	if n := countLines(d.log.String(), rejectedLine); n != 0 {
		t.Fatalf("notifyd rejected %d notifications, want none", n)
	}
}

func TestEveryKeyThroughNotify(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		counted bool // whether the ready worker still counts after key
	}{
		{"reloading", "RELOADING=1", false},
		{"watchdog trigger", "WATCHDOG=trigger", false},
		{"errno", "ERRNO=5", false},
		{"extend timeout", "EXTEND_TIMEOUT_USEC=1", true},
		{"monotonic", "MONOTONIC_USEC=1", true},
		{"fd name", "FDNAME=x", true},
		{"unknown key", "X_FOO=1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			d := startNotifyd(t, dir)
			w, other := sleeper(t), sleeper(t)
			send := func(pid, kv string) {
				t.Helper()
				if code, out := notify(t, "--socket", d.socket, "--pid", pid, kv); code != 0 {
					t.Fatalf("notify --pid %s %s = %d %q, want 0", pid, kv, code, out)
				}
			}
			send(pidString(w), "READY=1")
			wantHealth(t, d, 200, "1 workers ready\n")
			file := filepath.Join(dir, ".gunicorn.worker."+pidString(w))
			before, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}

			send(pidString(w), tt.key)
			if !tt.counted {
				wantHealth(t, d, 500, "0 workers ready\n")
				if tt.key == "RELOADING=1" {
					if got := stateFiles(t, dir); len(got) != 0 {
						t.Fatalf("state files %v while reloading, want none", got)
					}
					send(pidString(w), "READY=1")
					wantHealth(t, d, 200, "1 workers ready\n")
					if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
						t.Fatalf("state files %v after READY=1 again, want [%d]", got, w.Process.Pid)
					}
				}
			} else {
				wantHealth(t, d, 200, "1 workers ready\n")
				after, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				if string(after) != string(before) {
					t.Fatalf("%s changed the state file from %q to %q", tt.key, before, after)
				}
				// About a pid that is not registered, it registers nothing.
				send(pidString(other), tt.key)
				wantHealth(t, d, 200, "1 workers ready\n")
				if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
					t.Fatalf("state files %v, want only [%d]", got, w.Process.Pid)
				}
			}
			if n := countLines(d.log.String(), rejectedLine); n != 0 {
				t.Fatalf("%s: notifyd rejected %d notifications, want none", tt.key, n)
			}
		})
	}
}

func TestBarrierShapesAndDescriptors(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	c := dialNotifyd(t, d.socket)
	w := sleeper(t)

	// BARRIER=1 with exactly one descriptor: closing it is the acknowledgement.
	ack := newPipe(t)
	if err := c.Send([]byte("BARRIER=1"), 10*time.Second, ack.w); err != nil {
		t.Fatal(err)
	}
	ack.closeWrite()
	waitHangup(t, ack, "BARRIER=1 with one descriptor")

	// A descriptor that comes with READY=1 is closed, and the message applies.
	ready := newPipe(t)
	if err := c.Send([]byte("READY=1\nMAINPID="+pidString(w)), 10*time.Second, ready.w); err != nil {
		t.Fatal(err)
	}
	ready.closeWrite()
	waitHangup(t, ready, "READY=1 with a descriptor")

	barrier(t, c)
	notifydPid := d.cmd.Process.Pid
	before := fdCount(t, notifydPid)

	shapes := []struct {
		name    string
		payload string
		fds     int
	}{
		{"FDSTORE=1 with a descriptor", "FDSTORE=1\nFDNAME=x", 1},
		{"BARRIER=1 without a descriptor", "BARRIER=1", 0},
		{"BARRIER=1 with two descriptors", "BARRIER=1", 2},
		{"BARRIER=1 with READY=1", "BARRIER=1\nREADY=1", 1},
		{"BARRIER=1 with READY=1 and MAINPID, two descriptors", "READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()) + "\nBARRIER=1", 2},
	}
	for _, s := range shapes {
		var pipes []*pipeEnds
		var fds []int
		for range s.fds {
			p := newPipe(t)
			pipes = append(pipes, p)
			fds = append(fds, p.w)
		}
		if err := c.Send([]byte(s.payload), 10*time.Second, fds...); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		for i, p := range pipes {
			p.closeWrite()
			waitHangup(t, p, fmt.Sprintf("%s, descriptor %d", s.name, i+1))
		}
	}
	barrier(t, c)
	// A descriptor notifyd holds for a moment (a state file being written,
	// a connection) may be open at either count: a leak is one that stays.
	deadline := time.Now().Add(5 * time.Second)
	for after := fdCount(t, notifydPid); after > before; after = fdCount(t, notifydPid) {
		if time.Now().After(deadline) {
			t.Fatalf("notifyd has %d descriptors after the barrier shapes, %d before:\n%s", after, before, fdList(notifydPid))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Only the READY=1 registered anyone; the test process never counts.
	wantHealth(t, d, 200, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files for %v, want [%d]", got, w.Process.Pid)
	}
	badBarrier := regexp.MustCompile(`msg="rejected notification".* reason=bad_barrier`)
	waitFor(t, "four bad_barrier rejections in the log", func() bool {
		return countLines(d.log.String(), badBarrier) >= 4
	})
	if n, all := countLines(d.log.String(), badBarrier), countLines(d.log.String(), rejectedLine); n != 4 || all != 4 {
		t.Fatalf("log has %d bad_barrier rejections and %d rejections in all, want 4 and 4", n, all)
	}
}

func TestNotifyStatusAndReloading(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	pid := pidString(w)
	run := func(args ...string) {
		t.Helper()
		full := append([]string{"--socket", d.socket, "--pid", pid}, args...)
		if code, out := notify(t, full...); code != 0 || out != "" {
			t.Fatalf("notify %v = %d %q, want 0 and no output", full, code, out)
		}
	}
	run("--ready")
	wantHealth(t, d, 200, "1 workers ready\n")

	run("--status", "warming caches")
	wantHealth(t, d, 200, "1 workers ready\n")
	body, err := os.ReadFile(filepath.Join(dir, ".gunicorn.worker."+pid))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(body), "\n"), "STATUS=warming caches") {
		t.Fatalf("state file %q has no line STATUS=warming caches", body)
	}

	run("--reloading")
	wantHealth(t, d, 500, "0 workers ready\n")
	if got := stateFiles(t, dir); len(got) != 0 {
		t.Fatalf("state files %v while reloading, want none", got)
	}
	run("--ready")
	wantHealth(t, d, 200, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files %v, want [%d]", got, w.Process.Pid)
	}
}

func TestNotifyPidSelf(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	cmd := exec.Command(filepath.Join(bin, "notify"), "--socket", d.socket, "--ready", "--pid", "self")
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("notify --pid self: %v %q, want exit 0 and no output", err, out)
	}
	self := cmd.Process.Pid
	// notify is alive while it waits for the acknowledgement, so notifyd
	// registers it, then drops it when it exits.
	registered := regexp.MustCompile(fmt.Sprintf(`msg="worker ready" .*\bpid=%d\b`, self))
	left := regexp.MustCompile(fmt.Sprintf(`msg="worker left" .*\bpid=%d reason=exited\b`, self))
	waitFor(t, "notify's own pid to be registered and then dropped", func() bool {
		log := d.log.String()
		return registered.MatchString(log) && left.MatchString(log)
	})
	wantHealth(t, d, 500, "0 workers ready\n")
	// The exit was seen by notifyd itself, and acknowledged to nobody: the
	// files are in step only once a barrier says so.
	inStep(t, d)
	if got := stateFiles(t, dir); len(got) != 0 {
		t.Fatalf("state files %v after notify exited, want none", got)
	}
	if n := countLines(d.log.String(), rejectedLine); n != 0 {
		t.Fatalf("notifyd rejected %d notifications, want none", n)
	}
}

func TestNotifyPidParentIsTheShell(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	sh := exec.Command("sh", "-c", `"$0" --socket "$1" --ready; echo "notify exit $?"; sleep 1000`,
		filepath.Join(bin, "notify"), d.socket)
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	sh.Stderr = os.Stderr
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-sh.Process.Pid, syscall.SIGKILL) // the shell and its sleep
		sh.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if line != "notify exit 0\n" {
		t.Fatalf("shell printed %q, want \"notify exit 0\\n\"", line)
	}
	wantHealth(t, d, 200, "1 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, []int{sh.Process.Pid}) {
		t.Fatalf("state files for %v, want the shell [%d]", got, sh.Process.Pid)
	}
}

func TestNotifyNoBlock(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	if code, out := notify(t, "--socket", d.socket, "--no-block", "--ready", "--pid", pidString(w)); code != 0 || out != "" {
		t.Fatalf("notify --no-block = %d %q, want 0 and no output", code, out)
	}
	// Without the barrier notify may exit before notifyd reads the message.
	waitHealth(t, d, 200, "1 workers ready\n")
	inStep(t, d)
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files for %v, want [%d]", got, w.Process.Pid)
	}
}

// bindDatagram binds a datagram socket at path that nobody ever reads. It
// returns a function that closes the socket early; the test's end closes it
// otherwise.
func bindDatagram(t *testing.T, path string) (closeSocket func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	closed := false
	closeSocket = func() {
		if !closed {
			closed = true
			unix.Close(fd)
		}
	}
	t.Cleanup(closeSocket)
	return closeSocket
}

func TestNotifyTimesOutWithoutAcknowledgement(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "deaf.sock")
	bindDatagram(t, path)
	w := sleeper(t)
	code, out := notify(t, "--socket", path, "--ready", "--pid", pidString(w), "--timeout", "200ms")
	if code != 1 || strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") || !strings.Contains(out, "acknowledgement") {
		t.Fatalf("notify against a socket nobody reads = %d %q, want 1 and one line mentioning the acknowledgement", code, out)
	}
}

func TestNotifyNothingListens(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "stale.sock")
	bindDatagram(t, path)() // the file stays, the listener is gone
	code, out := notify(t, "--socket", path, "--ready", "--pid", "self")
	if code != 1 || strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") || !strings.Contains(out, "nothing listens") {
		t.Fatalf("notify against a stale socket = %d %q, want 1 and one line saying nothing listens", code, out)
	}
}
