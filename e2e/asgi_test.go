package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// python is the interpreter the Python servers run on: Debian's, where
// test.sh installs gunicorn, uvicorn and Celery.
const python = "/usr/bin/python3"

// needModule skips a test whose Python module is not installed, or fails it
// under CI=true, as need does for a tool.
func needModule(t *testing.T, module string) {
	t.Helper()
	if err := exec.Command(python, "-c", "import "+module).Run(); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("Python module %s is not installed; the test command installs it (see README)", module)
	}
	t.Skipf("Python module %s is not installed", module)
}

// startServer runs a Python server, python -m args..., in dir with the
// repository on its import path and NOTIFYD_SOCKET pointing at socket. It
// is stopped with SIGTERM at the end of the test.
func startServer(t *testing.T, dir, socket string, port int, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(python, append([]string{"-m"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NOTIFYD_SOCKET="+socket, "PYTHONPATH="+repoRoot, "PYTHONDONTWRITEBYTECODE=1")
	cmd.Env = append(cmd.Env, env...)
	return runServer(t, cmd, port)
}

// asgiExample is the directory of the example ASGI application.
func asgiExample() string { return filepath.Join(repoRoot, "examples/asgi") }

// statusPIDs lists the pids /status shows, sorted.
func statusPIDs(t *testing.T, d *daemon) []int {
	t.Helper()
	var pids []int
	for _, w := range statusActivity(t, d).Workers {
		pids = append(pids, w.PID)
	}
	slices.Sort(pids)
	return pids
}

// waitListed waits until the health answer is 200 with n workers ready and
// /status lists exactly the live processes live() returns, and returns them.
func waitListed(t *testing.T, d *daemon, n int, live func() []int) []int {
	t.Helper()
	var pids []int
	waitFor(t, fmt.Sprintf("200 %d workers ready, each a live process", n), func() bool {
		pids = live()
		h := d.health(t)
		return len(pids) == n && h.code == 200 && h.body == fmt.Sprintf("%d workers ready\n", n) &&
			slices.Equal(statusPIDs(t, d), pids)
	})
	return pids
}

// addsExactly sends requests to the application and checks that the
// instance's request counter rises by exactly that many.
func addsExactly(t *testing.T, d *daemon, s *server, requests int) {
	t.Helper()
	// A request's end is reported after its answer: wait until the last
	// ones are in before counting from here.
	waitFor(t, "no request in flight", func() bool { return statusActivity(t, d).InFlight == 0 })
	before := activityCounters(t, d)
	getAll(t, s, "/", requests, 2)
	want := before.requests + float64(requests)
	var now counters
	waitFor(t, fmt.Sprintf("notifyd_requests_total %v", want), func() bool {
		now = activityCounters(t, d)
		return now.requests >= want && statusActivity(t, d).InFlight == 0
	})
	if now.requests != want {
		t.Fatalf("notifyd_requests_total rose by %v, want exactly %d", now.requests-before.requests, requests)
	}
}

// twoInFlight runs two slow requests and waits until /status shows both in
// flight, then until they are answered.
func twoInFlight(t *testing.T, d *daemon, s *server) {
	t.Helper()
	slow := inBackground(t, s, "/sleep?s=2", 2)
	waitFor(t, "2 requests in flight", func() bool {
		return statusActivity(t, d).InFlight == 2
	})
	if m := metrics(t, d); m["notifyd_requests_in_flight"] != 2 {
		t.Fatalf("/metrics in flight %v while 2 requests run; want 2", m["notifyd_requests_in_flight"])
	}
	slow()
}

// TestASGIUvicornWorker runs the example application under gunicorn's
// UvicornWorker with the gunicorn hooks too: post_worker_init announces
// each worker, and the middleware reports through the same Reporter, so
// every request counts once.
func TestASGIUvicornWorker(t *testing.T) {
	gunicorn := need(t, "gunicorn")
	needModule(t, "uvicorn.workers")
	t.Setenv("NOTIFYD_REANNOUNCE", "2")
	d := startNotifyd(t, shortDir(t), "--require", "2")
	port := freePort(t)
	cmd := exec.Command(gunicorn, "--config", filepath.Join(repoRoot, "examples/gunicorn/gunicorn.conf.py"),
		"--chdir", asgiExample(), "--bind", fmt.Sprintf("127.0.0.1:%d", port), "--workers", "2",
		"--worker-class", "uvicorn.workers.UvicornWorker", "hello_asgi:app")
	cmd.Env = append(os.Environ(), "NOTIFYD_SOCKET="+d.socket, "PYTHONPATH="+repoRoot)
	s := runServer(t, cmd, port)
	live := waitListed(t, d, 2, s.workers)
	health := watchHealth(t, d, "2 workers ready\n")

	twoInFlight(t, d, s)
	addsExactly(t, d, s, 10)
	health.check(t)
	if got := s.workers(); !slices.Equal(got, live) {
		t.Fatalf("workers %v, want the same %v", got, live)
	}
	// Every READY=1 and every report reached notifyd.
	if n := bytes.Count([]byte(s.log.String()), []byte("could not send")); n != 0 {
		t.Fatalf("gunicorn logged %d failed sends:\n%s", n, s.log.String())
	}
}

// TestASGIUvicornWorkers runs `uvicorn --workers 2`, which has no hooks:
// the middleware announces each worker at its lifespan startup.
func TestASGIUvicornWorkers(t *testing.T) {
	needModule(t, "uvicorn")
	d := startNotifyd(t, shortDir(t), "--require", "2")
	port := freePort(t)
	s := startServer(t, asgiExample(), d.socket, port, nil,
		"uvicorn", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--workers", "2", "hello_asgi:app")
	live := waitListed(t, d, 2, func() []int { return spawned(s) })
	addsExactly(t, d, s, 10)

	victim := live[0]
	syscall.Kill(victim, syscall.SIGKILL)
	waitFor(t, "the killed worker dropped", func() bool {
		h := d.health(t)
		return h.code == 500 && h.body == "1 workers ready\n" && slices.Equal(statusPIDs(t, d), live[1:])
	})
	if exits := metrics(t, d)["notifyd_worker_exits_total"]; exits != 1 {
		t.Fatalf("notifyd_worker_exits_total %v, want 1 for the killed worker", exits)
	}
	if !replacesWorkers(t) {
		// Older uvicorn (Debian 12 has 0.17.6) never replaces a worker:
		// it keeps the dead one a zombie until it stops, and notifyd
		// dropped it all the same, as the kernel made it one.
		if st := procState(victim); st != "Z" {
			t.Fatalf("killed worker %d is in state %q, want a zombie uvicorn has not reaped", victim, st)
		}
		return
	}
	waitListed(t, d, 2, func() []int { return spawned(s) })
}

// spawned lists uvicorn's worker processes: the children multiprocessing
// spawned, not its resource tracker.
func spawned(s *server) []int {
	var out []int
	for _, pid := range s.workers() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(b, []byte("spawn_main")) {
			out = append(out, pid)
		}
	}
	return out
}

// replacesWorkers reports whether the installed uvicorn starts a new worker
// in place of one that died (uvicorn 0.30 and later).
func replacesWorkers(t *testing.T) bool {
	t.Helper()
	out, err := exec.Command(python, "-c",
		"from uvicorn.supervisors.multiprocess import Multiprocess as M; print(hasattr(M, 'keep_subprocess_alive'))").Output()
	if err != nil {
		t.Fatalf("ask uvicorn whether it replaces workers: %v", err)
	}
	return string(bytes.TrimSpace(out)) == "True"
}

// TestASGISingleUvicorn: one uvicorn process is one worker. A notifyd
// killed and started again without its state files counts it again from
// its re-announcement. Its graceful stop says STOPPING=1 before it exits,
// so notifyd counts no unannounced exit.
func TestASGISingleUvicorn(t *testing.T) {
	needModule(t, "uvicorn")
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "1")
	port := freePort(t)
	s := startServer(t, asgiExample(), d.socket, port, []string{"NOTIFYD_REANNOUNCE=1"},
		"uvicorn", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "hello_asgi:app")
	self := func() []int { return []int{s.cmd.Process.Pid} }
	waitListed(t, d, 1, self)
	// A single uvicorn binds its port just after the lifespan startup that
	// announced it.
	waitFor(t, "uvicorn to listen", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	addsExactly(t, d, s, 3)

	killNotifyd(t, d)
	for _, pid := range stateFiles(t, dir) {
		os.Remove(filepath.Join(dir, ".gunicorn.worker."+strconv.Itoa(pid)))
	}
	d = startNotifyd(t, dir, "--require", "1")
	waitListed(t, d, 1, self)

	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		t.Fatal("uvicorn did not stop on SIGTERM")
	}
	waitHealth(t, d, 500, "0 workers ready\n")
	if exits := metrics(t, d)["notifyd_worker_exits_total"]; exits != 0 {
		t.Fatalf("notifyd_worker_exits_total %v, want 0: uvicorn said STOPPING=1 at its lifespan shutdown", exits)
	}
}
