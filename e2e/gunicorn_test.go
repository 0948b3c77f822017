package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/internal/proctest"
)

// server is a running gunicorn with the example config and hook module.
type server struct {
	cmd  *exec.Cmd
	port int
	log  *syncBuffer
	done chan struct{}
}

// startGunicorn runs gunicorn with examples/gunicorn/gunicorn.conf.py, two
// sync workers, and NOTIFYD_SOCKET pointing at socket.
func startGunicorn(t *testing.T, socket string, args ...string) *server {
	t.Helper()
	return startGunicornAt(t, socket, fmt.Sprintf("127.0.0.1:%d", freePort(t)), args...)
}

// startGunicornAt is startGunicorn with the application on addr, a loopback
// host:port.
func startGunicornAt(t *testing.T, socket, addr string, args ...string) *server {
	t.Helper()
	gunicorn := need(t, "gunicorn")
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	full := append([]string{
		"--config", filepath.Join(repoRoot, "examples/gunicorn/gunicorn.conf.py"),
		"--chdir", filepath.Join(repoRoot, "examples/gunicorn"),
		"--bind", addr,
		"--workers", "2",
	}, args...)
	full = append(full, "hello:app")
	cmd := exec.Command(gunicorn, full...)
	cmd.Env = append(os.Environ(), "NOTIFYD_SOCKET="+socket)
	n, _ := strconv.Atoi(port)
	return runServer(t, cmd, n)
}

// runServer starts cmd, a server of the application on port, with its
// output in its log, and stops it with SIGTERM (SIGKILL after 15 s) at the
// end of the test, showing the log if the test failed.
func runServer(t *testing.T, cmd *exec.Cmd, port int) *server {
	t.Helper()
	s := &server{cmd: cmd, port: port, log: &syncBuffer{}, done: make(chan struct{})}
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(s.cmd.Args[0]), s.log.String())
		}
	})
	return s
}

// workers lists the master's live worker pids.
func (s *server) workers() []int { return children(s.cmd.Process.Pid) }

// get asks the application itself.
func (s *server) get(t *testing.T, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", s.port, path))
	if err != nil {
		t.Fatalf("application GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitSettled waits until gunicorn runs two workers, both announced: the
// state files name exactly the live workers and the health check says so.
func waitSettled(t *testing.T, d *daemon, s *server) []int {
	t.Helper()
	var live []int
	waitFor(t, "two live workers with matching state files", func() bool {
		live = s.workers()
		h := d.health(t)
		return len(live) == 2 && slices.Equal(stateFiles(t, d.dir), live) &&
			h.code == 200 && h.body == "2 workers ready\n"
	})
	return live
}

func TestGunicornBootCountsBothWorkers(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	wantHealth(t, d, 500, "0 workers ready\n")

	s := startGunicorn(t, d.socket)
	waitSettled(t, d, s)
	if code, body := s.get(t, "/"); code != 200 || body != "hello\n" {
		t.Fatalf("application answered %d %q, want 200 \"hello\\n\"", code, body)
	}
}

// sampleNeverOvercounts checks, for the length of one churn, that the health
// count never exceeds the workers that are really alive. Each sample is
// bracketed by two counts of live workers, so a worker that starts or dies
// during the sample cannot make a correct answer look wrong. A worker dies
// in the kernel before notifyd's epoll loop is scheduled to hear of it, so
// an excess is a failure only if notifyd never drops it: a dead worker that
// stays counted. How soon it is dropped is no verdict of a test on a loaded
// machine.
func sampleNeverOvercounts(t *testing.T, d *daemon, s *server, until func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !until() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for gunicorn to replace the worker")
		}
		if got, alive := overcount(t, d, s); got > alive {
			settle := time.Now().Add(proctest.Patience)
			for got > alive && time.Now().Before(settle) {
				time.Sleep(time.Millisecond)
				got, alive = overcount(t, d, s)
			}
			if got > alive {
				t.Fatalf("health keeps counting %d workers ready, but only %d are alive", got, alive)
			}
		}
	}
}

// overcount samples the health count between two counts of live workers.
func overcount(t *testing.T, d *daemon, s *server) (got, alive int) {
	t.Helper()
	before := len(s.workers())
	got = d.health(t).ready(t)
	return got, max(before, len(s.workers()))
}

func TestGunicornKilledWorkerIsDroppedAndReplaced(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := shortDir(t)
			d := startNotifyd(t, dir, "--require", "2")
			s := startGunicorn(t, d.socket)
			old := waitSettled(t, d, s)

			victim := old[0]
			syscall.Kill(victim, sig)
			sampleNeverOvercounts(t, d, s, func() bool {
				live := s.workers()
				return len(live) == 2 && !slices.Contains(live, victim) && slices.Equal(stateFiles(t, dir), live)
			})
			live := waitSettled(t, d, s)
			if slices.Contains(live, victim) {
				t.Fatalf("killed worker %d still listed among %v", victim, live)
			}
			if slices.Contains(stateFiles(t, dir), victim) {
				t.Fatalf("state file of killed worker %d still exists", victim)
			}
		})
	}
}

func TestGunicornHUPReloadKeepsHealthy(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	s := startGunicorn(t, d.socket)
	old := waitSettled(t, d, s)

	s.cmd.Process.Signal(syscall.SIGHUP)
	var live []int
	waitFor(t, "two new workers after HUP", func() bool {
		live = waitSettled(t, d, s)
		return !slices.Contains(live, old[0]) && !slices.Contains(live, old[1])
	})
	wantHealth(t, d, 200, "2 workers ready\n")
	if got := stateFiles(t, dir); !slices.Equal(got, live) {
		t.Fatalf("state files %v, want the new workers %v", got, live)
	}
	select {
	case <-s.done:
		t.Fatal("gunicorn master exited after HUP")
	default:
	}
}

func TestGunicornTimedOutWorkerIsReplaced(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	s := startGunicorn(t, d.socket, "--timeout", "2")
	old := waitSettled(t, d, s)

	// The request outlives --timeout, so the master kills its worker.
	go func() {
		c := http.Client{Timeout: 30 * time.Second}
		if resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/sleep?s=20", s.port)); err == nil {
			resp.Body.Close()
		}
	}()
	var live []int
	waitFor(t, "a worker to be replaced after its timeout", func() bool {
		live = waitSettled(t, d, s)
		return !slices.Equal(live, old)
	})
	if got := stateFiles(t, dir); !slices.Equal(got, live) {
		t.Fatalf("state files %v, want the live workers %v", got, live)
	}
}

func TestGunicornBootsWithoutNotifydAndIsCountedLater(t *testing.T) {
	dir := shortDir(t)
	socket := filepath.Join(dir, "notify.sock")
	s := startGunicorn(t, socket)
	waitFor(t, "the application to serve without notifyd", func() bool {
		return len(s.workers()) == 2 && s.log.String() != "" && appAnswers(s)
	})
	if code, body := s.get(t, "/"); code != 200 || body != "hello\n" {
		t.Fatalf("application answered %d %q without notifyd", code, body)
	}

	d := startNotifyd(t, dir, "--require", "2")
	wantHealth(t, d, 500, "0 workers ready\n")
	// Workers that announce themselves from now on are counted.
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitSettled(t, d, s)
}

func appAnswers(s *server) bool {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(s.port) + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
