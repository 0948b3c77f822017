package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// activityDoc is the part of /status that describes activity.
type activityDoc struct {
	Ready       int `json:"ready"`
	InFlight    int `json:"in_flight"`
	BusyWorkers int `json:"busy_workers"`
	Workers     []struct {
		PID         int     `json:"pid"`
		InFlight    int     `json:"in_flight"`
		Requests    uint64  `json:"requests"`
		BusySeconds float64 `json:"busy_seconds"`
	} `json:"workers"`
}

func statusActivity(t *testing.T, d *daemon) activityDoc {
	t.Helper()
	code, body := httpGet(t, "http://"+d.addr+"/status")
	if code != 200 {
		t.Fatalf("GET /status = %d %q, want 200", code, body)
	}
	var doc activityDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("decode /status %q: %v", body, err)
	}
	return doc
}

// metrics scrapes /metrics into the value of each sample, keyed by its
// name and labels as the text format writes them.
func metrics(t *testing.T, d *daemon) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+d.addr+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d, want 200", code)
	}
	out := map[string]float64{}
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// counters are the activity counters at one scrape.
type counters struct{ requests, busy, backwards float64 }

func activityCounters(t *testing.T, d *daemon) counters {
	t.Helper()
	m := metrics(t, d)
	return counters{m["notifyd_requests_total"], m["notifyd_busy_seconds_total"], m["notifyd_activity_backwards_total"]}
}

// healthWatch polls a health answer from a goroutine of its own, and keeps
// every answer that was not the one expected.
type healthWatch struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	odd  []string
	n    int
}

func watchHealth(t *testing.T, d *daemon, want string) *healthWatch {
	t.Helper()
	w := &healthWatch{stop: make(chan struct{}), done: make(chan struct{})}
	c := http.Client{Timeout: 10 * time.Second}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			got := ""
			resp, err := c.Get("http://" + d.addr + "/")
			if err != nil {
				got = err.Error()
			} else {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got = fmt.Sprintf("%d %s", resp.StatusCode, b)
			}
			w.mu.Lock()
			w.n++
			if got != "200 "+want {
				w.odd = append(w.odd, got)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.end)
	return w
}

func (w *healthWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// check stops the watch and fails the test if any answer differed, or if
// there were too few to mean anything.
func (w *healthWatch) check(t *testing.T) {
	t.Helper()
	w.end()
	if len(w.odd) > 0 {
		t.Fatalf("the health answer changed %d times in %d polls: %q", len(w.odd), w.n, w.odd)
	}
	if w.n < 10 {
		t.Fatalf("only %d health polls: the watch proves nothing", w.n)
	}
}

// getAll runs requests to the application at path, concurrency at a time,
// and returns once all have been answered 200.
func getAll(t *testing.T, s *server, path string, requests, concurrency int) {
	t.Helper()
	work := make(chan struct{}, requests)
	for range requests {
		work <- struct{}{}
	}
	close(work)
	errs := make(chan error, requests)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			c := http.Client{Timeout: 60 * time.Second}
			for range work {
				resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", s.port, path))
				if err != nil {
					errs <- err
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("GET %s: %s", path, resp.Status)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("application: %v", err)
	}
}

// inBackground runs getAll in a goroutine; wait returns once it is done.
func inBackground(t *testing.T, s *server, path string, requests int) (wait func()) {
	t.Helper()
	done := make(chan struct{})
	var failure error
	go func() {
		defer close(done)
		c := http.Client{Timeout: 60 * time.Second}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for range requests {
			wg.Go(func() {
				resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", s.port, path))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("GET %s: %s", path, resp.Status)
					}
				}
				if err != nil {
					mu.Lock()
					failure = err
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}()
	return func() {
		t.Helper()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatalf("requests to %s never finished", path)
		}
		if failure != nil {
			t.Fatalf("application: %v", failure)
		}
	}
}

// TestActivityGunicornSyncWorkers is the operator's view of two sync
// workers: two slow requests show in flight while they run, then the
// counters rise by exactly what was served, and the health answer never
// moves.
func TestActivityGunicornSyncWorkers(t *testing.T) {
	t.Setenv("NOTIFYD_REANNOUNCE", "2")
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	s := startGunicorn(t, d.socket)
	live := waitSettled(t, d, s)
	health := watchHealth(t, d, "2 workers ready\n")
	files := dirEntriesChanged(t, dir)
	before := activityCounters(t, d)
	began := time.Now()

	slow := inBackground(t, s, "/sleep?s=3", 2)
	var doc activityDoc
	waitFor(t, "2 requests in flight, one in each worker", func() bool {
		doc = statusActivity(t, d)
		if doc.InFlight != 2 || doc.BusyWorkers != 2 || len(doc.Workers) != 2 {
			return false
		}
		for _, w := range doc.Workers {
			if w.InFlight != 1 {
				return false
			}
		}
		return true
	})
	m := metrics(t, d)
	if m["notifyd_requests_in_flight"] != 2 || m["notifyd_workers_busy"] != 2 {
		t.Fatalf("/metrics in flight %v, busy %v while 2 requests run; want 2 and 2",
			m["notifyd_requests_in_flight"], m["notifyd_workers_busy"])
	}
	slow()
	getAll(t, s, "/", 40, 4)
	served := time.Since(began)

	want := before.requests + 42
	var now counters
	waitFor(t, fmt.Sprintf("notifyd_requests_total %v", want), func() bool {
		now = activityCounters(t, d)
		return now.requests >= want && metrics(t, d)["notifyd_requests_in_flight"] == 0
	})
	if now.requests != want {
		t.Fatalf("notifyd_requests_total rose by %v, want exactly 42", now.requests-before.requests)
	}
	// At least the two 3 s requests; at most each worker busy all the time
	// the test served, whatever the machine's load made of it.
	if busy := now.busy - before.busy; busy < 6 || busy > 2*served.Seconds() {
		t.Fatalf("notifyd_busy_seconds_total rose by %v, want from 6 to %.3f for two 3 s requests and 40 quick ones in %v",
			busy, 2*served.Seconds(), served)
	}
	doc = statusActivity(t, d)
	var requests uint64
	for _, w := range doc.Workers {
		requests += w.Requests
		if w.BusySeconds < 3 {
			t.Fatalf("worker %d busy %v s, want at least the 3 s it slept", w.PID, w.BusySeconds)
		}
	}
	if requests != 42 || doc.InFlight != 0 || doc.BusyWorkers != 0 {
		t.Fatalf("/status: %d requests, %d in flight, %d busy; want 42, 0, 0", requests, doc.InFlight, doc.BusyWorkers)
	}
	health.check(t)
	if now.backwards != 0 {
		t.Fatalf("notifyd_activity_backwards_total %v, want 0: the workers' reports arrive in order", now.backwards)
	}
	if files() {
		t.Fatal("activity changed the state directory")
	}
	if got := s.workers(); len(got) != 2 || got[0] != live[0] || got[1] != live[1] {
		t.Fatalf("workers %v, want the same %v", got, live)
	}
}

// TestActivityGunicornGthread: one gthread worker with 4 threads serves 3
// slow requests at once. In flight counts all three; busy time counts the
// time with any of them in flight, once.
func TestActivityGunicornGthread(t *testing.T) {
	t.Setenv("NOTIFYD_REANNOUNCE", "2")
	d := startNotifyd(t, shortDir(t), "--require", "1")
	s := startGunicorn(t, d.socket, "--worker-class", "gthread", "--threads", "4", "--workers", "1")
	waitWorkers(t, d, s, 1)
	health := watchHealth(t, d, "1 workers ready\n")
	before := activityCounters(t, d)
	began := time.Now()

	slow := inBackground(t, s, "/sleep?s=3", 3)
	waitFor(t, "3 requests in flight in one worker", func() bool {
		doc := statusActivity(t, d)
		return doc.InFlight == 3 && doc.BusyWorkers == 1 && len(doc.Workers) == 1 && doc.Workers[0].InFlight == 3
	})
	if m := metrics(t, d); m["notifyd_requests_in_flight"] != 3 || m["notifyd_workers_busy"] != 1 {
		t.Fatalf("/metrics in flight %v, busy %v; want 3 and 1", m["notifyd_requests_in_flight"], m["notifyd_workers_busy"])
	}
	slow()
	served := time.Since(began)
	var now counters
	waitFor(t, "3 requests counted", func() bool {
		now = activityCounters(t, d)
		return now.requests >= before.requests+3 && statusActivity(t, d).InFlight == 0
	})
	if got := now.requests - before.requests; got != 3 {
		t.Fatalf("notifyd_requests_total rose by %v, want 3", got)
	}
	// At least the 3 s the requests overlapped, and no more than the time
	// they took together: the overlap counts once, not three times.
	if busy := now.busy - before.busy; busy < 3 || busy > served.Seconds() {
		t.Fatalf("notifyd_busy_seconds_total rose by %v, want from 3 to %.3f, the %v the requests took", busy, served.Seconds(), served)
	}
	health.check(t)
}

// TestActivityLostDatagramsConverge stops notifyd during a burst, so that
// the workers' datagrams overflow its socket queue and most are lost. The
// requests never wait for notifyd, and once it runs again the totals come
// to exactly what was served.
func TestActivityLostDatagramsConverge(t *testing.T) {
	t.Setenv("NOTIFYD_REANNOUNCE", "1")
	d := startNotifyd(t, shortDir(t), "--require", "2")
	s := startGunicorn(t, d.socket)
	waitSettled(t, d, s)
	before := activityCounters(t, d)
	accepted := metrics(t, d)[`notifyd_messages_total{result="accepted"}`]

	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		t.Fatal(err)
	}
	qlen, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// Two datagrams a request: far more than the queue holds.
	requests := qlen + 100
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	getAll(t, s, "/", requests, 4) // answered while notifyd is stopped
	if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	want := before.requests + float64(requests)
	var now counters
	waitFor(t, fmt.Sprintf("notifyd_requests_total %v", want), func() bool {
		now = activityCounters(t, d)
		return now.requests == want && statusActivity(t, d).InFlight == 0
	})
	m := metrics(t, d)
	if got := m[`notifyd_messages_total{result="accepted"}`] - accepted; got >= float64(2*requests) {
		t.Fatalf("notifyd accepted %v datagrams for %d requests: none was lost, so the test proves nothing", got, requests)
	}
	if now.backwards != 0 {
		t.Fatalf("notifyd_activity_backwards_total %v, want 0", now.backwards)
	}
	wantHealth(t, d, 200, "2 workers ready\n")
}

// TestActivityTotalsSurviveWorkerExit: a worker that exits, however it
// exits, leaves its counts in the totals, and its replacement counts from
// zero on top of them.
func TestActivityTotalsSurviveWorkerExit(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Setenv("NOTIFYD_REANNOUNCE", "2")
			d := startNotifyd(t, shortDir(t), "--require", "2")
			s := startGunicorn(t, d.socket)
			old := waitSettled(t, d, s)
			before := activityCounters(t, d)
			getAll(t, s, "/", 10, 2)
			waitFor(t, "10 requests counted", func() bool {
				return activityCounters(t, d).requests == before.requests+10
			})
			last := activityCounters(t, d)

			syscall.Kill(old[0], sig)
			waitFor(t, "the worker replaced and counted", func() bool {
				now := activityCounters(t, d)
				if now.requests < last.requests || now.busy < last.busy {
					t.Fatalf("the totals went down from %+v to %+v", last, now)
				}
				last = now
				live := s.workers()
				return len(live) == 2 && live[0] != old[0] && live[1] != old[0] &&
					d.health(t).body == "2 workers ready\n"
			})
			if last.requests != before.requests+10 {
				t.Fatalf("notifyd_requests_total %v after the exit, want %v", last.requests, before.requests+10)
			}
			getAll(t, s, "/", 10, 2)
			waitFor(t, "20 requests counted", func() bool {
				now := activityCounters(t, d)
				if now.requests < last.requests || now.busy < last.busy {
					t.Fatalf("the totals went down from %+v to %+v", last, now)
				}
				last = now
				return now.requests >= before.requests+20
			})
			if last.requests != before.requests+20 {
				t.Fatalf("notifyd_requests_total %v, want %v", last.requests, before.requests+20)
			}
		})
	}
}

// TestActivityHostileValues sends activity no honest worker sends. A bad
// value rejects the message whole; a counter that goes backwards is ignored
// and counted; the largest values stop the totals at the top rather than
// wrap them around.
func TestActivityHostileValues(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "1")
	w := sleeper(t)
	pid := strconv.Itoa(w.Process.Pid)
	c := dialNotifyd(t, d.socket)
	sendNow := func(msg string) {
		t.Helper()
		if err := c.Send([]byte(msg), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		barrier(t, c)
	}
	report := func(inFlight, requests, busy string) string {
		return "PID=" + pid + "\nX_NOTIFYD_IN_FLIGHT=" + inFlight + "\nX_NOTIFYD_REQUESTS=" + requests + "\nX_NOTIFYD_BUSY_USEC=" + busy
	}
	wantWorker := func(inFlight int, requests uint64, busy float64) {
		t.Helper()
		doc := statusActivity(t, d)
		if len(doc.Workers) != 1 {
			t.Fatalf("/status lists %d workers, want 1", len(doc.Workers))
		}
		if got := doc.Workers[0]; got.InFlight != inFlight || got.Requests != requests || got.BusySeconds != busy {
			t.Fatalf("worker in_flight %d, requests %d, busy_seconds %v; want %d, %d, %v",
				got.InFlight, got.Requests, got.BusySeconds, inFlight, requests, busy)
		}
	}

	// Activity alone never registers a worker.
	sendNow(report("1", "1", "1"))
	if doc := statusActivity(t, d); len(doc.Workers) != 0 {
		t.Fatalf("activity alone registered %d workers", len(doc.Workers))
	}
	sendNow("READY=1\n" + report("0", "5", "1000000"))
	sendNow(report("2", "7", "1500000"))
	wantWorker(2, 7, 1.5)
	if got := activityCounters(t, d); got != (counters{requests: 2, busy: 0.5}) {
		t.Fatalf("counters %+v, want 2 requests and 0.5 s since the first report", got)
	}

	rejected := []struct{ name, msg, reason string }{
		{"negative", report("-1", "8", "1600000"), "bad_value"},
		{"non-digits", report("1", "eight", "1600000"), "bad_value"},
		{"a sign", report("1", "+8", "1600000"), "bad_value"},
		{"empty", report("1", "8", ""), "bad_value"},
		{"beyond 64 bits", report("1", "18446744073709551616", "1600000"), "bad_value"},
		{"in flight beyond 32 bits", report("4294967296", "8", "1600000"), "bad_value"},
		{"only some keys", "PID=" + pid + "\nX_NOTIFYD_REQUESTS=8", "conflict"},
	}
	for _, r := range rejected {
		before := metrics(t, d)[`notifyd_messages_total{result="`+r.reason+`"}`]
		sendNow(r.msg)
		if got := metrics(t, d)[`notifyd_messages_total{result="`+r.reason+`"}`]; got != before+1 {
			t.Fatalf("%s: notifyd_messages_total{result=%q} %v, want %v", r.name, r.reason, got, before+1)
		}
		wantWorker(2, 7, 1.5)
	}

	sendNow(report("0", "6", "1600000"))
	sendNow(report("0", "8", "1400000"))
	wantWorker(2, 7, 1.5)
	if got := activityCounters(t, d); got != (counters{requests: 2, busy: 0.5, backwards: 2}) {
		t.Fatalf("counters %+v after two reports that went backwards, want them ignored and counted", got)
	}
	wantHealth(t, d, 200, "1 workers ready\n")

	// The largest values are valid. As a worker's first report they only
	// set where its counting starts; as a leap from a worker's last report
	// they are more than a worker can do, so they are ignored and counted,
	// and the totals are never frozen at the top of 64 bits.
	other := strconv.Itoa(sleeper(t).Process.Pid)
	const most = "18446744073709551615"
	sendNow("READY=1\nPID=" + other + "\nX_NOTIFYD_IN_FLIGHT=4294967295\nX_NOTIFYD_REQUESTS=" + most + "\nX_NOTIFYD_BUSY_USEC=" + most)
	sendNow(report("4294967295", most, most))
	if got := activityCounters(t, d); got != (counters{requests: 2, busy: 0.5, backwards: 3}) {
		t.Fatalf("counters %+v after a leap to the largest values, want it ignored and counted", got)
	}
	m := metrics(t, d)
	if got, want := m["notifyd_requests_in_flight"], float64(math.MaxUint32+2); got != want {
		t.Fatalf("notifyd_requests_in_flight %v, want %v", got, want)
	}
	wantHealth(t, d, 200, "2 workers ready\n")
	if got := statusActivity(t, d); got.InFlight != math.MaxUint32+2 || got.BusyWorkers != 2 {
		t.Fatalf("/status in_flight %d, busy_workers %d; want %d and 2", got.InFlight, got.BusyWorkers, math.MaxUint32+2)
	}
	promtoolCheck(t, need(t, "promtool"), func() string { _, b := httpGet(t, "http://"+d.addr+"/metrics"); return b }())
}

// TestActivityHaproxyAgentIdleWeight runs HAProxy's agent-check against a
// notifyd with --agent-weight idle over a real gunicorn with two sync
// workers: the weight halves with one worker busy, drops to the floor with
// both, and comes back when they are done.
func TestActivityHaproxyAgentIdleWeight(t *testing.T) {
	need(t, "haproxy")
	t.Setenv("NOTIFYD_REANNOUNCE", "2")
	d := startNotifyd(t, shortDir(t), "--require", "1", "--expect", "2",
		"--agent-bind", "127.0.0.1:0", "--agent-weight", "idle", "--agent-weight-floor", "10")
	_, agentPort, err := net.SplitHostPort(d.agentAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	s := startGunicorn(t, d.socket)
	waitSettled(t, d, s)
	h := startHaproxy(t, fmt.Sprintf(`backend app
    server web1 127.0.0.1:%d check inter 100ms weight 100 agent-check agent-addr 127.0.0.1 agent-port %s agent-inter 100ms
`, s.port, agentPort))

	weight := func(what, w string) {
		t.Helper()
		h.waitServer(t, "app", "web1", what, map[string]string{
			"srv_op_state": opRunning,
			"status":       "UP",
			"srv_uweight":  w,
			"weight":       w,
		})
	}
	weight("both workers idle", "100")
	first := inBackground(t, s, "/sleep?s=10", 1)
	weight("one of two workers busy", "50")
	second := inBackground(t, s, "/sleep?s=10", 1)
	weight("both workers busy", "10")
	wantHealth(t, d, 200, "2 workers ready\n")
	first()
	second()
	weight("both workers idle again", "100")
}
