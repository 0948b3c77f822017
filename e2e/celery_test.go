package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startRedis runs a private Redis server on a Unix socket in dir, with
// nothing saved to disk, and returns its socket path and the process. It
// is stopped at the end of the test if it still runs.
func startRedis(t *testing.T, dir string) (string, *exec.Cmd) {
	t.Helper()
	redis := need(t, "redis-server")
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(redis, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("redis log:\n%s", log.String())
		}
	})
	waitFor(t, "redis to answer PING", func() bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return false
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && line == "+PONG\r\n"
	})
	return sock, cmd
}

// workerStates maps each pid /status lists to its state.
func workerStates(t *testing.T, d *daemon) map[int]string {
	t.Helper()
	_, body := httpGet(t, "http://"+d.addr+"/status")
	var doc struct {
		Workers []struct {
			PID   int    `json:"pid"`
			State string `json:"state"`
		} `json:"workers"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("decode /status %q: %v", body, err)
	}
	states := map[int]string{}
	for _, w := range doc.Workers {
		states[w.PID] = w.State
	}
	return states
}

// TestCeleryPrefork runs a real Celery worker, --concurrency 2, against a
// private Redis: its pool processes are the workers notifyd counts, tasks
// are their activity, and the answer never depends on the broker.
func TestCeleryPrefork(t *testing.T) {
	needModule(t, "celery")
	needModule(t, "redis")
	dir := shortDir(t)
	redisSock, redis := startRedis(t, dir)
	d := startNotifyd(t, dir, "--require", "2")
	env := []string{"CELERY_BROKER_URL=redis+socket://" + redisSock, "NOTIFYD_REANNOUNCE=1", "NOTIFYD_TASK_DEADLINE=5"}
	example := filepath.Join(repoRoot, "examples/celery")
	started := time.Now()
	s := startServer(t, example, d.socket, 0, env, "celery", "-A", "hello_celery", "worker",
		"--concurrency", "2", "--loglevel", "info", "--without-mingle", "--without-gossip", "--without-heartbeat")
	pool := waitListed(t, d, 2, s.workers)
	t.Logf("celery start to 200 2 workers ready: %v", time.Since(started).Round(time.Millisecond))

	// send queues tasks through the broker, as a producer does.
	send := func(call string) {
		t.Helper()
		cmd := exec.Command(python, "-c", "import hello_celery as h\n"+call)
		cmd.Dir = example
		cmd.Env = append(os.Environ(), "PYTHONPATH="+repoRoot, "PYTHONDONTWRITEBYTECODE=1", "NOTIFYD_SOCKET="+d.socket)
		cmd.Env = append(cmd.Env, env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("send %s: %v\n%s", call, err, out)
		}
	}

	t.Run("5 tasks add exactly 5", func(t *testing.T) {
		before := activityCounters(t, d)
		send("for _ in range(5): h.nap.delay(0)")
		want := before.requests + 5
		var now counters
		waitFor(t, "5 more tasks counted", func() bool {
			now = activityCounters(t, d)
			return now.requests >= want && statusActivity(t, d).InFlight == 0
		})
		if now.requests != want {
			t.Fatalf("notifyd_requests_total rose by %v, want exactly 5", now.requests-before.requests)
		}
	})

	t.Run("a killed pool process is dropped and its successor counted", func(t *testing.T) {
		victim := pool[0]
		syscall.Kill(victim, syscall.SIGKILL)
		waitFor(t, "the killed pool process dropped", func() bool {
			_, listed := workerStates(t, d)[victim]
			return !listed
		})
		if exits := metrics(t, d)["notifyd_worker_exits_total"]; exits != 1 {
			t.Fatalf("notifyd_worker_exits_total %v, want 1: the kill is seen as an exit", exits)
		}
		pool = waitListed(t, d, 2, s.workers)
		if slices.Contains(pool, victim) {
			t.Fatalf("killed pool process %d listed among %v", victim, pool)
		}
	})

	t.Run("a task past its deadline makes its process hung", func(t *testing.T) {
		release := filepath.Join(dir, "release")
		send("h.hold.delay(" + pyString(release) + ")")
		var hung int
		waitFor(t, "one pool process hung", func() bool {
			hung = 0
			for pid, state := range workerStates(t, d) {
				if state == "hung" {
					hung = pid
				}
			}
			return hung != 0
		})
		h := d.health(t)
		if h.code != 500 || h.body != "1 workers ready\n" {
			t.Fatalf("health with one pool process hung = %d %q, want 500 \"1 workers ready\\n\"", h.code, h.body)
		}
		if err := os.WriteFile(release, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the released process ready again", func() bool {
			return workerStates(t, d)[hung] == "ready" && d.health(t).code == 200
		})
	})

	t.Run("the answer stays 200 with the broker down", func(t *testing.T) {
		waitListed(t, d, 2, s.workers)
		health := watchHealth(t, d, "2 workers ready\n")
		redis.Process.Signal(syscall.SIGTERM)
		waitFor(t, "celery to lose its broker", func() bool {
			return strings.Contains(s.log.String(), "Connection to broker lost")
		})
		// Every pool process re-announces each second: four more accepted
		// messages show that both were heard from with the broker gone.
		accepted := func() float64 { return metrics(t, d)[`notifyd_messages_total{result="accepted"}`] }
		from := accepted()
		waitFor(t, "both pool processes heard from twice", func() bool { return accepted() >= from+4 })
		health.check(t)
		if got := s.workers(); !slices.Equal(got, pool) {
			t.Fatalf("pool %v, want the same %v", got, pool)
		}
	})
}

// pyString quotes s as a Python string literal.
func pyString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
