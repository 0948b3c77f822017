package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// nobody is the unprivileged uid and gid the credential tests run as.
const nobody = 65534

// notifyForNobody copies the notify binary into a directory that uid 65534
// can enter, since the harness builds it in a private one, and returns its
// path.
func notifyForNobody(t *testing.T) string {
	t.Helper()
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(bin, "notify"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// runAsNobody runs a program with setpriv as uid and gid 65534 and no
// supplementary groups, and returns its exit code and output.
func runAsNobody(t *testing.T, setpriv string, args ...string) (int, string) {
	t.Helper()
	full := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
	cmd := exec.Command(setpriv, full...)
	cmd.Dir = "/"
	return exitCode(t, cmd)
}

// sleeperAs starts a sleep that runs as uid and gid id, and kills it at the
// end of the test.
func sleeperAs(t *testing.T, id uint32) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: id, Gid: id}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestCredentialsOfAnUnprivilegedUser(t *testing.T) {
	setpriv := need(t, "setpriv")
	notifyPath := notifyForNobody(t)
	tests := []struct {
		name      string
		access    string
		workerUID uint32
		counted   bool
	}{
		{"same-uid refuses another user's process", "same-uid", 0, false},
		{"same-uid accepts the sender's own process", "same-uid", nobody, true},
		{"root refuses every other user", "root", nobody, false},
		{"all accepts any process", "all", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			d := startNotifyd(t, dir, "--socket-group", strconv.Itoa(nobody), "--socket-mode", "0660", "--access", tt.access)
			w := sleeperAs(t, tt.workerUID)
			if uid := procUID(t, w.Process.Pid); uid != int(tt.workerUID) {
				t.Fatalf("worker %d runs as uid %d, want %d", w.Process.Pid, uid, tt.workerUID)
			}

			code, out := runAsNobody(t, setpriv, notifyPath, "--socket", d.socket, "--ready", "--pid", pidString(w))
			if code != 0 || out != "" {
				t.Fatalf("notify as uid 65534 = %d %q, want 0 (processed) and no output", code, out)
			}
			if tt.counted {
				wantHealth(t, d, 200, "1 workers ready\n")
				if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
					t.Fatalf("state files for %v, want [%d]", got, w.Process.Pid)
				}
				if n := countLines(d.log.String(), rejectedLine); n != 0 {
					t.Fatalf("notifyd rejected %d notifications, want none", n)
				}
				return
			}
			wantHealth(t, d, 500, "0 workers ready\n")
			if got := stateFiles(t, dir); len(got) != 0 {
				t.Fatalf("state files for %v, want none", got)
			}
			refused := regexp.MustCompile(`msg="rejected notification" .*reason=not_permitted .*sender_uid=65534\b`)
			waitFor(t, "a not_permitted rejection of uid 65534 in the log", func() bool {
				return refused.MatchString(d.log.String())
			})
		})
	}
}

// procUID is the real uid of process pid.
func procUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				uid, err := strconv.Atoi(f[0])
				if err == nil {
					return uid
				}
			}
		}
	}
	t.Fatalf("/proc/%d/status has no Uid line", pid)
	return -1
}

func TestSocketFileModeAndGroup(t *testing.T) {
	tests := []struct {
		name string
		args []string
		mode uint32
		gid  uint32
	}{
		{"group 65534 and 0660", []string{"--socket-group", strconv.Itoa(nobody), "--socket-mode", "0660"}, 0o660, nobody},
		{"0600 and notifyd's group", []string{"--socket-mode", "0600"}, 0o600, uint32(os.Getgid())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			d := startNotifyd(t, dir, tt.args...)
			fi, err := os.Lstat(d.socket)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
				t.Fatalf("%s has file type %#o, want a socket", d.socket, st.Mode&syscall.S_IFMT)
			}
			if perm := st.Mode & 0o7777; perm != tt.mode || st.Gid != tt.gid {
				t.Fatalf("socket mode %#o group %d, want %#o group %d", perm, st.Gid, tt.mode, tt.gid)
			}
		})
	}
}

// refusedStart runs notifyd with args, which it must refuse, and returns its
// exit code and output. A notifyd that keeps running is killed and fails the
// test.
func refusedStart(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "notifyd"), append([]string{"--bind", "127.0.0.1:0"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("notifyd %v did not refuse to start; output:\n%s", args, out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
		t.Fatalf("notifyd %v: %v, want a non-zero exit; output:\n%s", args, err, out)
	}
	return ee.ExitCode(), string(out)
}

// errorLine returns the one line of out that is not a log record, failing the
// test when there is not exactly one.
func errorLine(t *testing.T, out string) string {
	t.Helper()
	var plain []string
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !strings.HasPrefix(line, "time=") {
			plain = append(plain, line)
		}
	}
	if len(plain) != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("output %q, want exactly one error line", out)
	}
	return plain[0]
}

func TestStartRefusesSocketPathItMustNotTouch(t *testing.T) {
	t.Run("regular file", func(t *testing.T) {
		dir := shortDir(t)
		path := filepath.Join(dir, "notify.sock")
		if err := os.WriteFile(path, []byte("keep me\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		_, out := refusedStart(t, "--socket", path, "--dir", shortDir(t))
		if line := errorLine(t, out); !strings.Contains(line, path) || !strings.Contains(line, "not a socket") {
			t.Fatalf("error %q, want the path and \"not a socket\"", line)
		}
		fi, err := os.Lstat(path)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 {
			t.Fatalf("after the refusal %s is %v (%v), want the regular file with mode 0640", path, fi, err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me\n" {
			t.Fatalf("after the refusal %s holds %q (%v), want \"keep me\\n\"", path, b, err)
		}
	})

	t.Run("symlink", func(t *testing.T) {
		dir := shortDir(t)
		target := filepath.Join(dir, "target")
		if err := os.WriteFile(target, []byte("target\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "notify.sock")
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		_, out := refusedStart(t, "--socket", path, "--dir", shortDir(t))
		if line := errorLine(t, out); !strings.Contains(line, path) || !strings.Contains(line, "symlink") && !strings.Contains(line, "not a socket") {
			t.Fatalf("error %q, want the path and why it is refused", line)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("after the refusal %s is %v (%v), want the symlink", path, fi, err)
		}
		if got, err := os.Readlink(path); err != nil || got != target {
			t.Fatalf("after the refusal the link points to %q (%v), want %q", got, err, target)
		}
		if b, err := os.ReadFile(target); err != nil || string(b) != "target\n" {
			t.Fatalf("after the refusal the target holds %q (%v), want \"target\\n\"", b, err)
		}
	})

	t.Run("live listener", func(t *testing.T) {
		dir := shortDir(t)
		first := startNotifyd(t, dir)
		var before syscall.Stat_t
		if err := syscall.Lstat(first.socket, &before); err != nil {
			t.Fatal(err)
		}
		_, out := refusedStart(t, "--socket", first.socket, "--dir", shortDir(t))
		if line := errorLine(t, out); !strings.Contains(line, first.socket) || !strings.Contains(line, "in use") {
			t.Fatalf("error %q, want the path and \"in use\"", line)
		}
		var after syscall.Stat_t
		if err := syscall.Lstat(first.socket, &after); err != nil || after.Ino != before.Ino {
			t.Fatalf("socket file changed: inode %d, was %d (%v)", after.Ino, before.Ino, err)
		}
		select {
		case <-first.done:
			t.Fatalf("the first notifyd exited: %v", first.err)
		default:
		}
		w := sleeper(t)
		if code, out := notify(t, "--socket", first.socket, "--ready", "--pid", pidString(w)); code != 0 {
			t.Fatalf("notify to the first notifyd = %d %q, want 0", code, out)
		}
		wantHealth(t, first, 200, "1 workers ready\n")
	})
}

func TestStateDirectoryMustNotBeWorldWritableWithoutSticky(t *testing.T) {
	t.Run("0777 is refused", func(t *testing.T) {
		dir := shortDir(t)
		if err := syscall.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		// The state file of a process that has exited: a notifyd that went
		// on to recover would delete it.
		gone := strconv.Itoa(goneProcess(t))
		stale := filepath.Join(dir, ".gunicorn.worker."+gone)
		if err := os.WriteFile(stale, []byte("PID="+gone+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		socket := filepath.Join(shortDir(t), "notify.sock")
		_, out := refusedStart(t, "--socket", socket, "--dir", dir)
		if line := errorLine(t, out); !strings.Contains(line, dir) || !strings.Contains(line, "world-writable") {
			t.Fatalf("error %q, want the directory and \"world-writable\"", line)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil || st.Mode&0o7777 != 0o777 {
			t.Fatalf("directory mode %#o (%v), want 0777 untouched", st.Mode&0o7777, err)
		}
		if b, err := os.ReadFile(stale); err != nil || string(b) != "PID="+gone+"\n" {
			t.Fatalf("state file %s: %q (%v), want it untouched", stale, b, err)
		}
		if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket %s created despite the refusal (%v)", socket, err)
		}
	})

	t.Run("01777 is accepted", func(t *testing.T) {
		dir := shortDir(t)
		if err := syscall.Chmod(dir, 0o1777); err != nil {
			t.Fatal(err)
		}
		d := startNotifyd(t, shortDir(t), "--dir", dir)
		w := sleeper(t)
		if code, out := notify(t, "--socket", d.socket, "--ready", "--pid", pidString(w)); code != 0 {
			t.Fatalf("notify = %d %q, want 0", code, out)
		}
		wantHealth(t, d, 200, "1 workers ready\n")
		if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
			t.Fatalf("state files in %s: %v, want [%d]", dir, got, w.Process.Pid)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil || st.Mode&0o7777 != 0o1777 {
			t.Fatalf("directory mode %#o (%v), want 01777", st.Mode&0o7777, err)
		}
	})
}

// goneProcess returns the pid of a process that has exited and been reaped.
func goneProcess(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid %d is in use again", pid)
	}
	return pid
}

// fetchHealth gets the health answer over a connection that is closed
// afterwards, so that no idle connection stays open in notifyd.
func fetchHealth(d *daemon) (health, error) {
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + d.addr + "/")
	if err != nil {
		return health{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return health{}, err
	}
	return health{code: resp.StatusCode, body: string(b)}, nil
}

// waitFDCount waits until process pid has want descriptors open. Closed HTTP
// connections leave notifyd a moment after the client is done with them.
func waitFDCount(t *testing.T, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := fdCount(t, pid)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("notifyd has %d descriptors, want %d as before:\n%s", got, want, fdList(pid))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	a, b, spare := sleeper(t), sleeper(t), sleeper(t)
	for _, w := range []string{pidString(a), pidString(b)} {
		if code, out := notify(t, "--socket", d.socket, "--ready", "--pid", w); code != 0 {
			t.Fatalf("notify --ready --pid %s = %d %q", w, code, out)
		}
	}
	want := sortedPids(a, b)
	if got := stateFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("state files for %v, want %v", got, want)
	}
	c := dialNotifyd(t, d.socket)
	barrier(t, c)
	notifydPid := d.cmd.Process.Pid
	before := fdCount(t, notifydPid)
	if h, err := fetchHealth(d); err != nil || h.code != 200 || h.body != "2 workers ready\n" {
		t.Fatalf("health before the flood = %+v (%v), want 200 \"2 workers ready\\n\"", h, err)
	}
	waitFDCount(t, notifydPid, before)

	// Each of these would register the spare sleeper, the test process or
	// pid 1 if notifyd took any part of it.
	sp := pidString(spare)
	bad := []struct {
		name    string
		payload string
	}{
		{"5000 bytes", "READY=1\nPID=" + sp + "\nX_PAD=" + strings.Repeat("a", 5000-len("READY=1\nPID="+sp+"\nX_PAD="))},
		{"embedded NUL", "READY=1\x00PID=1"},
		{"invalid UTF-8 in STATUS", "READY=1\nPID=" + sp + "\nSTATUS=\xff\xfeok"},
		{"control characters in STATUS", "READY=1\nPID=" + sp + "\nSTATUS=a\x1b[2Jb"},
		{"READY=1 and READY=2", "READY=1\nREADY=2\nPID=" + sp},
		{"PID and MAINPID disagree", "READY=1\nPID=" + sp + "\nMAINPID=1"},
		{"pid 0", "READY=1\nPID=0"},
		{"pid -1", "READY=1\nPID=-1"},
		{"pid too large", "READY=1\nPID=99999999999"},
		{"pid not a number", "READY=1\nPID=abc"},
		{"pid of no process", "READY=1\nPID=" + strconv.Itoa(goneProcess(t))},
	}
	if n := len(bad[0].payload); n != 5000 {
		t.Fatalf("large datagram is %d bytes, want 5000", n)
	}

	// Health is fetched while the flood runs; every answer must be the same.
	var (
		mu      sync.Mutex
		answers []health
		errs    []error
		stop    = make(chan struct{})
		fetched = make(chan struct{})
	)
	stopFetching := sync.OnceFunc(func() { close(stop); <-fetched })
	t.Cleanup(stopFetching)
	go func() {
		defer close(fetched)
		for {
			h, err := fetchHealth(d)
			mu.Lock()
			answers, errs = append(answers, h), append(errs, err)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	start := time.Now()
	for _, m := range bad {
		if err := c.Send([]byte(m.payload), 10*time.Second); err != nil {
			t.Fatalf("send %s: %v", m.name, err)
		}
	}
	const flood = 100_000
	var seed [32]byte
	copy(seed[:], "notifyd bad input flood")
	src := rand.NewChaCha8(seed)
	r := rand.New(src)
	buf := make([]byte, 5000)
	attached := newPipe(t)
	withFD := 0
	for i := range flood {
		p := buf[:r.IntN(len(buf)+1)]
		src.Read(p)
		var fds []int
		if r.IntN(16) == 0 {
			fds = []int{attached.w}
			withFD++
		}
		if err := c.Send(p, 10*time.Second, fds...); err != nil {
			t.Fatalf("send random datagram %d of %d bytes: %v", i, len(p), err)
		}
	}
	stopFetching()
	attached.closeWrite()
	waitHangup(t, attached, fmt.Sprintf("the pipe attached to %d random datagrams", withFD))
	barrier(t, c)
	elapsed := time.Since(start)

	select {
	case <-d.done:
		t.Fatalf("notifyd exited during the flood: %v", d.err)
	default:
	}
	waitFDCount(t, notifydPid, before)
	mu.Lock()
	for i, h := range answers {
		if errs[i] != nil || h.code != 200 || h.body != "2 workers ready\n" {
			mu.Unlock()
			t.Fatalf("health during the flood = %+v (%v), want 200 \"2 workers ready\\n\"", h, errs[i])
		}
	}
	mu.Unlock()
	wantHealth(t, d, 200, "2 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("state files for %v after the flood, want %v", got, want)
	}

	// At most 5 log lines a second, with a burst of 5.
	seconds := math.Ceil(elapsed.Seconds())
	limit := 5*int(seconds) + 5
	lines := countLines(d.log.String(), rejectedLine)
	if lines < 5 || lines > limit {
		t.Fatalf("%d rejected datagrams in %s logged %d lines, want 5 to %d", len(bad)+flood, elapsed, lines, limit)
	}
	t.Logf("%d bad datagrams (%d with a descriptor) in %s; %d log lines; %d health answers during the flood",
		len(bad)+flood, withFD, elapsed.Round(time.Millisecond), lines, len(answers))
}
