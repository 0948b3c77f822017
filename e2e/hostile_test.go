package e2e

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/httpapi"
)

// These tests play a neighbour that means harm: any client of the health
// port, or any process of the workers' user. Nothing they do may exhaust,
// freeze or fool notifyd.

// keepAlive opens a connection to addr, asks one health check on it and
// reads the answer, leaving the connection open and idle.
func keepAlive(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: notifyd\r\n\r\n")); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	resp.Body.Close()
	c.SetDeadline(time.Time{})
	return c, nil
}

// TestHostileIdleKeepAliveConnections: 5,000 idle keep-alive connections
// cannot use up notifyd's descriptors or memory. It keeps at most
// httpapi.MaxConns, a fresh probe is answered within a second, and the
// resident memory of the plain binary stays under the 64 MiB of the
// Kubernetes example.
func TestHostileIdleKeepAliveConnections(t *testing.T) {
	const idle = 5000
	raiseNoFile(t, idle+1024)
	d := startPlainNotifyd(t, shortDir(t), "--require", "0")
	pid := d.cmd.Process.Pid

	conns := make(chan net.Conn, idle)
	t.Cleanup(func() {
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 50 {
		wg.Go(func() {
			for range idle / 50 {
				c, err := keepAlive(d.addr)
				if err != nil {
					select {
					case errs <- fmt.Errorf("client %d: %w", g, err):
					default:
					}
					return
				}
				conns <- c
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("open idle keep-alive connections: %v", err)
	default:
	}
	if open := fdCount(t, pid); open > httpapi.MaxConns+32 {
		t.Fatalf("notifyd holds %d descriptors with %d idle connections, want at most MaxConns (%d) and its own\n%s", open, idle, httpapi.MaxConns, fdList(pid))
	}

	// The probe's deadline is the bound itself.
	client := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + d.addr + "/")
	if err != nil {
		t.Fatalf("fresh probe with %d idle connections held: %v", idle, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("fresh probe = %d, want 200", resp.StatusCode)
	}
	peak, err := memoryField(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("peak resident memory with %d idle connections: %.1f MiB", idle, float64(peak)/1024)
	if peak >= 64<<10 {
		t.Fatalf("notifyd's peak resident memory is %d KiB, want under 64 MiB", peak)
	}
}

// memoryField reads a kB field of /proc/<pid>/status, such as VmHWM.
func memoryField(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s line", pid, field)
}

// lingeringSocket returns a TCP socket whose close, as its last reference,
// blocks for an hour, longer than any test runs: SO_LINGER is set, and it
// holds data its peer never reads. The peer's listener closes at the end of
// the test, and the close with it.
func lingeringSocket(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range []int{unix.SO_SNDBUF, unix.SO_RCVBUF} {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 4096)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	// The listener never accepts: the peer's buffers fill, then this one's.
	unix.SetNonblock(fd, true)
	chunk := make([]byte, 64<<10)
	for {
		if _, err := unix.Write(fd, chunk); err != nil {
			break
		}
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 3600}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return fd
}

// TestHostileLingeringSocketDoesNotFreezeTheLoop: a passed TCP socket whose
// close would block for its linger time is closed away from the datagram
// loop. The next READY=1 and its barrier are answered while that close
// still blocks, and the socket is closed all the same.
func TestHostileLingeringSocketDoesNotFreezeTheLoop(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	c := dialNotifyd(t, d.socket)

	sock := lingeringSocket(t)
	var st unix.Stat_t
	if err := unix.Fstat(sock, &st); err != nil {
		t.Fatal(err)
	}
	inode := fmt.Sprintf("socket:[%d]", st.Ino)
	// A message notifyd rejects, so that the descriptor is closed at once.
	if err := c.Send([]byte("X_UNKNOWN=1"), 5*time.Second, sock); err != nil {
		t.Fatal(err)
	}
	unix.Close(sock) // notifyd's copy is the last one

	// The close lingers for an hour: a loop that waited for it would
	// answer nothing within the wait's deadline.
	start := time.Now()
	if err := c.Send([]byte("READY=1\nPID="+pidString(w)), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(20 * time.Second); err != nil {
		t.Fatalf("READY=1 and its barrier behind a lingering socket: %v", err)
	}
	t.Logf("READY=1 and its barrier took %s", time.Since(start))
	wantHealth(t, d, 200, "1 workers ready\n")
	waitFor(t, "notifyd to close the lingering socket", func() bool {
		return !strings.Contains(fdList(d.cmd.Process.Pid), inode)
	})
}

// TestHostileFIFOsInTheStateDirectory: a FIFO at every name notifyd opens in
// its state directory (the lock, the drain mark, a worker's temporary and
// final state file, a state file to recover) blocks nothing: registration,
// barriers, drain, /status and SIGTERM all go through, and notifyd writes
// regular files of its own in their place.
func TestHostileFIFOsInTheStateDirectory(t *testing.T) {
	dir := shortDir(t)
	w, gone := sleeper(t), sleeper(t)
	gonePid := pidString(gone)
	gone.Process.Kill()
	gone.Wait()
	for _, name := range []string{
		".notifyd.lock",
		".notifyd.draining",
		".gunicorn.worker." + pidString(w) + ".tmp",
		".gunicorn.worker." + pidString(w),
		".gunicorn.worker." + gonePid,
	} {
		if err := unix.Mkfifo(filepath.Join(dir, name), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	d := startNotifyd(t, dir)
	c := dialNotifyd(t, d.socket)
	if err := c.Send([]byte("READY=1\nPID="+pidString(w)), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	barrier(t, c)
	wantHealth(t, d, 200, "1 workers ready\n")
	if err := c.Send([]byte("X_NOTIFYD_DRAIN=1"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	barrier(t, c)
	if code, body := httpGet(t, "http://"+d.addr+"/status"); code != 200 || !strings.Contains(body, `"draining": true`) {
		t.Fatalf("GET /status = %d %q, want 200 and draining", code, body)
	}
	for _, name := range []string{".notifyd.lock", ".notifyd.draining", ".gunicorn.worker." + pidString(w)} {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: %v, mode %v; want a regular file", name, err, fi.Mode())
		}
	}
	for _, name := range []string{".gunicorn.worker." + pidString(w) + ".tmp", ".gunicorn.worker." + gonePid} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", name, err)
		}
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		t.Fatal("notifyd did not stop within 5 s of SIGTERM")
	}
}

// TestHostileTemporaryFileSymlink: a symlink at a worker's temporary state
// file name is neither followed nor left: the state file is written, and
// the link's target is untouched.
func TestHostileTemporaryFileSymlink(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)
	target := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(target, []byte("not notifyd's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(dir, ".gunicorn.worker."+pidString(w))
	if err := os.Symlink(target, final+".tmp"); err != nil {
		t.Fatal(err)
	}
	registerReady(t, d, w)
	inStep(t, d)
	if fi, err := os.Lstat(final); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("state file: %v; want a regular file", err)
	}
	if _, err := os.Lstat(final + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("the temporary name is still there (%v)", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "not notifyd's\n" {
		t.Fatalf("the link's target now holds %q", b)
	}
	if n := metricSamples(t, d)["notifyd_state_file_errors_total"]; n != 0 {
		t.Fatalf("notifyd_state_file_errors_total = %v, want 0", n)
	}
}

// TestHostileSharedStateDirectory: a directory any user may write is
// refused unless it is sticky and notifyd's user owns it; in one that is,
// recovery adopts no file another user made, so it cannot fake a worker.
func TestHostileSharedStateDirectory(t *testing.T) {
	needRoot(t, "create files as another user")
	nobody := uint32(65534)
	t.Run("sticky, owned by another user", func(t *testing.T) {
		dir := shortDir(t)
		if err := os.Chmod(dir, os.ModeSticky|0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, int(nobody), int(nobody)); err != nil {
			t.Fatal(err)
		}
		d := launch(t, dir, nil, nil)
		<-d.done
		if !strings.Contains(d.log.String(), "world-writable and belongs to uid 65534") {
			t.Fatalf("notifyd started in a sticky directory of another user, or said something else:\n%s", d.log.String())
		}
	})
	t.Run("sticky, owned by notifyd's user", func(t *testing.T) {
		dir := shortDir(t)
		if err := os.Chmod(dir, os.ModeSticky|0o777); err != nil {
			t.Fatal(err)
		}
		w := sleeper(t)
		forged := filepath.Join(dir, ".gunicorn.worker."+pidString(w))
		if err := os.WriteFile(forged, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(forged, int(nobody), int(nobody)); err != nil {
			t.Fatal(err)
		}
		d := startNotifyd(t, dir)
		wantHealth(t, d, 500, "0 workers ready\n")
		if !strings.Contains(d.log.String(), "owned by uid 65534") {
			t.Fatalf("notifyd did not say why it dropped the forged file:\n%s", d.log.String())
		}
	})
}

// TestHostileWatchdogValues: WATCHDOG_USEC=18446744073709551615, systemd's
// infinity, means no deadline; a larger deadline than notifyd can time is
// rejected, in a datagram and in --watchdog-usec.
func TestHostileWatchdogValues(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--watchdog-usec", "18446744073709551615")
	w, other := sleeper(t), sleeper(t)
	c := dialNotifyd(t, d.socket)
	for _, msg := range []string{
		"READY=1\nWATCHDOG_USEC=18446744073709551615\nPID=" + pidString(w),
		"READY=1\nPID=" + pidString(other),
		"WATCHDOG_USEC=10000000000000000\nPID=" + pidString(other),
	} {
		if err := c.Send([]byte(msg), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	barrier(t, c)
	// A second barrier: a deadline in the past would have fired by now.
	barrier(t, c)
	wantHealth(t, d, 200, "2 workers ready\n")
	if n := messageCounts(t, d)["bad_value"]; n != 1 {
		t.Fatalf("bad_value rejections = %d, want 1 (WATCHDOG_USEC=10000000000000000)", n)
	}
	if !strings.Contains(d.log.String(), "notifyd can time") {
		t.Fatalf("the rejection does not say why:\n%s", d.log.String())
	}

	code, out := exitCode(t, exec.Command(filepath.Join(bin, "notifyd"), "--watchdog-usec", "10000000000000000"))
	if code != 2 || !strings.Contains(out, `--watchdog-usec "10000000000000000"`) || !strings.Contains(out, "notifyd can time") {
		t.Fatalf("notifyd --watchdog-usec 10000000000000000 = exit %d %q, want 2 and the reason", code, out)
	}
}

// TestHostileFailedWorkerLogFlood: a worker that declares itself failed
// again and again gets a few log lines a second, then one that says how
// many were held back.
func TestHostileFailedWorkerLogFlood(t *testing.T) {
	const sends = 2000
	d := startNotifyd(t, shortDir(t))
	w := sleeper(t)
	c := dialNotifyd(t, d.socket)
	start := time.Now()
	for range sends {
		if err := c.Send([]byte("ERRNO=5\nPID="+pidString(w)), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	barrier(t, c)
	took := time.Since(start)
	lines := countLines(d.log.String(), regexp.MustCompile(`worker declared itself failed`))
	// At most 5 a second, the burst included.
	if limit := 5 * (int(took/time.Second) + 2); lines > limit {
		t.Fatalf("%d failure lines for %d messages in %s, want at most %d", lines, sends, took, limit)
	}
	// The next one says how many were held back.
	waitFor(t, "a line counting the suppressed ones", func() bool {
		if err := c.Send([]byte("ERRNO=5\nPID="+pidString(w)), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		barrier(t, c)
		return regexp.MustCompile(`worker declared itself failed.*suppressed=\d+`).MatchString(d.log.String())
	})
}

// TestHostileActivityCannotFreezeTotals: a worker that reports 2^64-1
// requests is ignored and counted; another worker's 1,000 requests still
// reach notifyd_requests_total.
func TestHostileActivityCannotFreezeTotals(t *testing.T) {
	d := startNotifyd(t, shortDir(t))
	hostile, honest := sleeper(t), sleeper(t)
	c := dialNotifyd(t, d.socket)
	report := func(w *exec.Cmd, requests uint64) {
		msg := fmt.Sprintf("READY=1\nPID=%d\nX_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=%d\nX_NOTIFYD_BUSY_USEC=0", w.Process.Pid, requests)
		if err := c.Send([]byte(msg), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	report(hostile, 0)
	report(honest, 0)
	report(hostile, math.MaxUint64)
	report(honest, 1000)
	barrier(t, c)
	got := activityCounters(t, d)
	if got.requests != 1000 || got.backwards != 1 {
		t.Fatalf("requests total %v, ignored reports %v; want 1000 and 1", got.requests, got.backwards)
	}
}

// TestHostileSecondNotifydOnOneDirectory: a second notifyd on a state
// directory in use refuses to start and names the first one's pid; the
// first goes on answering.
func TestHostileSecondNotifydOnOneDirectory(t *testing.T) {
	dir := shortDir(t)
	first := startNotifyd(t, dir)
	w := sleeper(t)
	registerReady(t, first, w)
	second := launch(t, dir, nil, nil, "--socket", filepath.Join(shortDir(t), "notify.sock"))
	select {
	case <-second.done:
	case <-time.After(20 * time.Second):
		t.Fatal("a second notifyd on the same --dir is still running")
	}
	want := fmt.Sprintf("is locked by notifyd pid %d", first.cmd.Process.Pid)
	if second.err == nil || !strings.Contains(second.log.String(), want) {
		t.Fatalf("second notifyd: %v, log:\n%s\nwant a failure saying %q", second.err, second.log.String(), want)
	}
	wantHealth(t, first, 200, "1 workers ready\n")
}
