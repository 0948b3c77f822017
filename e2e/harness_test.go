package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/internal/addrfile"
	"github.com/notifyd/notifyd/internal/proctest"
)

// Shared with the other packages' tests: internal/proctest.
var (
	waitFor  = proctest.Eventually
	shortDir = proctest.ShortDir
	sleeper  = proctest.Sleeper
)

// bin holds the notifyd and notify binaries built once for the whole run.
var bin string

// repoRoot is the repository's top directory.
var repoRoot string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	repoRoot, _ = filepath.Abs("..")
	build := exec.Command("go", "build", "-race", "-o", dir+"/", "./cmd/notifyd", "./cmd/notify")
	build.Dir = repoRoot
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build notifyd and notify:", err)
		return 1
	}
	bin = dir
	// Race-enabled binaries sleep a second at exit by default.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	return m.Run()
}

// need returns the path of an external tool. A missing tool skips the test,
// or fails it under CI=true.
func need(t *testing.T, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed; the test command installs it (see README)", tool)
	}
	t.Skipf("%s is not installed", tool)
	return ""
}

// daemon is a running notifyd.
type daemon struct {
	cmd    *exec.Cmd
	dir    string // state directory
	socket string
	addr   string // HTTP address, as host:port
	agent  string // agent-check address, with --agent-bind
	log    *syncBuffer
	done   chan struct{}
	err    error
	// addrFile is the address file notifyd writes once it listens: how
	// a test learns the ports the kernel chose (see internal/addrfile).
	addrFile string
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startNotifyd runs notifyd with its state and socket in dir, an HTTP port
// chosen by the kernel, and extra flags. It waits until notifyd has written
// its address file and stops it at the end of the test.
func startNotifyd(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	d := launch(t, dir, nil, nil, args...)
	d.waitStarted(t)
	return d
}

// startPlainNotifyd builds notifyd without the race detector and runs it
// as startNotifyd does. The race detector's own memory grows with every
// goroutine a program starts, one per HTTP connection in notifyd, by about
// 1.5 MiB a minute under the soak's load while the Go runtime's stays flat,
// so only a plain build's resident memory can show a leak of notifyd's.
func startPlainNotifyd(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	out := t.TempDir()
	build := exec.Command("go", "build", "-o", out+"/", "./cmd/notifyd")
	build.Dir = repoRoot
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build notifyd without -race: %v\n%s", err, b)
	}
	// launch runs the harness's race-enabled binary behind a wrapper; this
	// one puts the plain binary in its place.
	plain := filepath.Join(out, "notifyd")
	if strings.ContainsAny(plain, "'\\") {
		t.Fatalf("temporary directory %q cannot be quoted for sh", plain)
	}
	d := launch(t, dir, nil, []string{"sh", "-c", "shift; exec '" + plain + "' \"$@\"", "sh"}, args...)
	d.waitStarted(t)
	return d
}

// launch starts notifyd, or with wrap a command that runs it, with extra
// environment variables, without waiting for it to start.
func launch(t *testing.T, dir string, env, wrap []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{dir: dir, socket: filepath.Join(dir, "notify.sock"), log: &syncBuffer{}, done: make(chan struct{})}
	full := append([]string{filepath.Join(bin, "notifyd"), "--socket", d.socket, "--dir", dir, "--bind", "127.0.0.1:0", "--log-level", "debug"}, args...)
	full = append(wrap, full...)
	d.cmd = exec.Command(full[0], full[1:]...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stderr = d.log
	d.cmd.Stdout = d.log
	d.addrFile = filepath.Join(t.TempDir(), "address.json")
	d.follow(t, addrfile.Start(d.cmd, d.addrFile))
	return d
}

// follow fails the test when d's command did not start (err), and
// otherwise waits for it in the background and kills it at the end of the
// test, showing its log if the test failed.
func (d *daemon) follow(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("notifyd log:\n%s", d.log.String())
		}
	})
}

// waitStarted waits until notifyd listens and learns its addresses from
// its address file.
func (d *daemon) waitStarted(t *testing.T) {
	t.Helper()
	a, err := addrfile.Await(d.addrFile, d.done, 20*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, d.log.String())
	}
	d.addr, d.agent = a.HTTP, a.Agent
}

// health is one answer of the health check.
type health struct {
	code int
	body string
}

func (d *daemon) health(t *testing.T) health {
	t.Helper()
	return getHealth(t, "http://"+d.addr+"/")
}

func getHealth(t *testing.T, url string) health {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return health{code: resp.StatusCode, body: string(b)}
}

// ready parses the count out of a "N workers ready" body.
func (h health) ready(t *testing.T) int {
	t.Helper()
	n, rest, ok := strings.Cut(h.body, " ")
	count, err := strconv.Atoi(n)
	if !ok || err != nil || rest != "workers ready\n" {
		t.Fatalf("health body %q is not \"<n> workers ready\\n\"", h.body)
	}
	return count
}

func wantHealth(t *testing.T, d *daemon, code int, body string) {
	t.Helper()
	if got := d.health(t); got.code != code || got.body != body {
		t.Fatalf("health = %d %q, want %d %q", got.code, got.body, code, body)
	}
}

func waitHealth(t *testing.T, d *daemon, code int, body string) {
	t.Helper()
	var last health
	waitFor(t, fmt.Sprintf("health %d %q", code, body), func() bool {
		last = d.health(t)
		return last.code == code && last.body == body
	})
}

// stop sends sig to notifyd and waits for it to exit.
func (d *daemon) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("notifyd did not exit after %v", sig)
	}
	return d.err
}

// stateFiles lists the pids that have a state file in dir, sorted.
func stateFiles(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			continue // a state file being written this moment
		}
		if n, ok := strings.CutPrefix(e.Name(), ".gunicorn.worker."); ok {
			pid, err := strconv.Atoi(n)
			if err != nil {
				t.Fatalf("unexpected file %s", e.Name())
			}
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// notify runs the notify client and returns its exit code and output.
func notify(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return exitCode(t, exec.Command(filepath.Join(bin, "notify"), args...))
}

// exitCode runs cmd to its end and returns its exit code and its combined
// output. A command that could not be run fails the test.
func exitCode(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// alive reports whether pid is a live process (not gone, not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// freePort asks the kernel for a free loopback TCP port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// children lists the pids of the live child processes of pid.
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Split(bufio.ScanWords)
	for sc.Scan() {
		if n, err := strconv.Atoi(sc.Text()); err == nil && alive(n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// needRoot skips a test that only root can run, or fails it under CI=true,
// as need does for a missing tool: CI runs the tests as root.
func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the test must run as root to %s", why)
	}
	t.Skipf("not root: cannot %s", why)
}

// inStep returns once notifyd's state files are in step with its registry,
// which is when it acknowledges a barrier. The files trail the health answer
// by about a millisecond, so a test that saw the answer change without a
// barrier of its own calls inStep before it looks at them.
func inStep(t *testing.T, d *daemon) {
	t.Helper()
	barrier(t, dialNotifyd(t, d.socket))
}
