//go:build linux

package registry

import (
	"context"
	"errors"
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

	"github.com/notifyd/notifyd/protocol"

	"github.com/notifyd/notifyd/internal/proctest"
)

// Shared with the other packages' tests: internal/proctest.
var (
	eventually = proctest.Eventually
)

// waitFor is how long a test waits for an asynchronous effect before it
// fails: proctest.Patience.
const waitFor = proctest.Patience

// defaultPattern is the seed's state file name.
const defaultPattern = ".gunicorn.worker.{}"

// nobody is the uid and gid of the unprivileged user the access tests use.
const nobody = 65534

// rootCreds are the credentials of a root sender: the test process itself.
func rootCreds() protocol.Credentials {
	return protocol.Credentials{PID: os.Getpid(), UID: 0, GID: 0}
}

// child is a real process started by the test. It is killed and reaped when
// the test ends, whatever the test did with it.
type child struct {
	cmd  *exec.Cmd
	once sync.Once
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// kill sends SIGKILL. The process stays a zombie until reap.
func (c *child) kill(tb testing.TB) {
	tb.Helper()
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		tb.Fatalf("kill %d: %v", c.pid(), err)
	}
}

// reap waits for the process, so that its pid is released.
func (c *child) reap() {
	c.once.Do(func() { c.cmd.Wait() })
}

// killAndReap ends the process and releases its pid.
func (c *child) killAndReap(tb testing.TB) {
	tb.Helper()
	c.kill(tb)
	c.reap()
}

// startProcess starts name with args as a child of the test process and
// waits until it runs the program that was asked for (setpriv execs its
// command, and only then has the final credentials).
func startProcess(tb testing.TB, cred *syscall.Credential, name string, args ...string) *child {
	tb.Helper()
	cmd := exec.Command(name, args...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	c := &child{cmd: cmd}
	tb.Cleanup(func() {
		c.cmd.Process.Kill()
		c.reap()
	})
	return c
}

// startSleep starts a root-owned "sleep 1000".
func startSleep(tb testing.TB) *child {
	tb.Helper()
	return startProcess(tb, nil, "sleep", "1000")
}

// startSleepAs starts "sleep 1000" with the given real uid and gid.
func startSleepAs(tb testing.TB, uid, gid uint32) *child {
	tb.Helper()
	return startProcess(tb, &syscall.Credential{Uid: uid, Gid: gid}, "sleep", "1000")
}

// startSetpriv starts "setpriv <args> sleep 1000" and waits until setpriv has
// become sleep, so that the process has the credentials setpriv gave it.
func startSetpriv(tb testing.TB, args ...string) *child {
	tb.Helper()
	c := startProcess(tb, nil, "setpriv", append(args, "sleep", "1000")...)
	eventually(tb, "setpriv to exec sleep", func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(c.pid()) + "/comm")
		return err == nil && string(b) == "sleep\n"
	})
	return c
}

// procStat returns the state (field 3) and the start time (field 22) of pid
// as /proc/<pid>/stat gives them. Fields are counted from the last ')',
// since the command name may hold anything.
func procStat(tb testing.TB, pid int) (state string, startTime uint64) {
	tb.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		tb.Fatalf("read stat of %d: %v", pid, err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	st, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		tb.Fatalf("start time of %d in %q: %v", pid, s, err)
	}
	return fields[0], st
}

func startTimeOf(tb testing.TB, pid int) uint64 {
	tb.Helper()
	_, st := procStat(tb, pid)
	return st
}

// waitZombie waits until pid, killed and not yet reaped, is a zombie.
func waitZombie(tb testing.TB, pid int) {
	tb.Helper()
	eventually(tb, "pid "+strconv.Itoa(pid)+" to be a zombie", func() bool {
		state, _ := procStat(tb, pid)
		return state == "Z"
	})
}

// testConfig is a Config for a fresh private state directory.
func testConfig(tb testing.TB) Config {
	tb.Helper()
	return Config{Dir: tb.TempDir(), Filename: defaultPattern, Detection: Pidfd, ReapInterval: time.Hour}
}

// startRegistry creates a registry for cfg and runs its exit watch loop
// until the test ends; then it stops the loop, waits for it, and closes the
// registry.
func startRegistry(tb testing.TB, cfg Config) *Registry {
	tb.Helper()
	r, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
		if err := r.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return r
}

// send applies m with creds and fails the test if the registry rejects it.
func send(tb testing.TB, r *Registry, m protocol.Message, creds protocol.Credentials) {
	tb.Helper()
	if err := r.HandleMessage(m, creds); err != nil {
		tb.Fatalf("HandleMessage(%+v, %+v): %v", m, creds, err)
	}
	r.Sync() // as the socket does before it acknowledges a barrier
}

func ready(pid int) protocol.Message { return protocol.Message{Lifecycle: protocol.Ready, PID: pid} }

func stopping(pid int) protocol.Message {
	return protocol.Message{Lifecycle: protocol.Stopping, PID: pid}
}

func reloading(pid int) protocol.Message {
	return protocol.Message{Lifecycle: protocol.Reloading, PID: pid}
}

func text(s string) *string { return &s }

// statePath is the state file of pid under the default pattern.
func statePath(dir string, pid int) string {
	return filepath.Join(dir, ".gunicorn.worker."+strconv.Itoa(pid))
}

// stateName is the base name of the state file of pid under the default
// pattern.
func stateName(pid int) string { return ".gunicorn.worker." + strconv.Itoa(pid) }

// wantState is the exact content of the state file of w.
func wantState(w Worker) string {
	var b strings.Builder
	b.WriteString("PID=" + strconv.Itoa(w.PID) + "\n")
	b.WriteString("STARTTIME=" + strconv.FormatUint(w.StartTime, 10) + "\n")
	b.WriteString("READY_AT=" + w.ReadyAt.UTC().Format(time.RFC3339Nano) + "\n")
	if w.Status != "" {
		b.WriteString("STATUS=" + w.Status + "\n")
	}
	if w.WatchdogUSec != 0 {
		b.WriteString("WATCHDOG_USEC=" + strconv.FormatUint(w.WatchdogUSec, 10) + "\n")
	}
	return b.String()
}

// readFile returns the content of path and fails the test if it cannot be
// read.
func readFile(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// dirNames lists the names in dir, sorted, but for the state directory's
// lock, which every registry keeps there.
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("read dir %s: %v", dir, err)
	}
	names := []string{}
	for _, de := range des {
		if de.Name() == lockFile {
			continue
		}
		names = append(names, de.Name())
	}
	slices.Sort(names)
	return names
}

// sorted returns names sorted, for comparing with dirNames.
func sorted(names ...string) []string {
	out := append([]string{}, names...)
	slices.Sort(out)
	return out
}

// pids returns the pids of workers, in order.
func pids(workers []Worker) []int {
	out := []int{}
	for _, w := range workers {
		out = append(out, w.PID)
	}
	return out
}

// oneWorker returns the only registered worker and fails the test if there
// is not exactly one.
func oneWorker(tb testing.TB, r *Registry) Worker {
	tb.Helper()
	ws := r.Workers()
	if len(ws) != 1 {
		tb.Fatalf("Workers() = %+v, want exactly one", ws)
	}
	return ws[0]
}

// wantSummary fails the test unless r's summary is exactly want.
func wantSummary(tb testing.TB, r *Registry, want Summary) {
	tb.Helper()
	if got := r.Summary(); got != want {
		tb.Fatalf("Summary() = %+v, want %+v", got, want)
	}
}

// recorder keeps every Summary that OnChange was called with.
type recorder struct {
	mu   sync.Mutex
	seen []Summary
}

func (rec *recorder) onChange(s Summary) {
	rec.mu.Lock()
	rec.seen = append(rec.seen, s)
	rec.mu.Unlock()
}

func (rec *recorder) summaries() []Summary {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]Summary{}, rec.seen...)
}

func itoa(n int) string { return strconv.Itoa(n) }

func utoa(n uint64) string { return strconv.FormatUint(n, 10) }

// savedNames waits for r's state files to catch up with it, then lists its
// state directory, sorted.
func savedNames(tb testing.TB, r *Registry) []string {
	tb.Helper()
	r.Sync()
	return dirNames(tb, r.cfg.Dir)
}
