package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/protocol"
)

// The fault tests run short in CI. -long runs them at full length and adds
// the soak, whose length -soak sets:
//
//	go test ./e2e -run Fault -long -soak 10m -timeout 30m
var (
	long = flag.Bool("long", false, "run the fault tests at full length, and the soak")
	soak = flag.Duration("soak", 10*time.Minute, "how long TestFaultSoak runs under -long")
)

// raiseNoFile makes sure this process may open n descriptors, raising its
// soft RLIMIT_NOFILE up to the hard limit if needed. notifyd, a Go program,
// raises its own.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		t.Fatalf("RLIMIT_NOFILE hard limit %d, the test needs %d descriptors", rl.Max, n)
	}
	rl.Cur = n
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to %d: %v", n, err)
	}
}

// rssKiB is the resident set size of process pid in KiB, VmRSS in
// /proc/<pid>/status.
func rssKiB(pid int) (int, error) { return memoryField(pid, "VmRSS") }

// metricSamples fetches /metrics and returns every sample's value by its
// series as printed, such as notifyd_messages_total{result="accepted"}.
func metricSamples(t *testing.T, d *daemon) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+d.addr+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d %q", code, body)
	}
	out := map[string]float64{}
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics line %q is not a sample", line)
		}
		out[line[:i]] = v
	}
	return out
}

// messageCounts is notifyd_messages_total by result.
func messageCounts(t *testing.T, d *daemon) map[string]int {
	t.Helper()
	out := map[string]int{}
	for series, v := range metricSamples(t, d) {
		if rest, ok := strings.CutPrefix(series, `notifyd_messages_total{result="`); ok {
			out[strings.TrimSuffix(rest, `"}`)] = int(v)
		}
	}
	return out
}

// closeIdleHTTP closes the keep-alive connections that getHealth and the
// functions built on it (statusPids, metricSamples, wantHealth) leave open
// in http.DefaultTransport, so that notifyd's descriptor count shows only
// its own.
func closeIdleHTTP() {
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
}

// latencies summarises measured durations for the test log.
func latencies(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("%d requests: p50 %v, p99 %v, max %v", len(s),
		at(0.50).Round(time.Microsecond), at(0.99).Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

// healthBody is the plain health answer's body.
var healthBody = regexp.MustCompile(`^(\d+) workers ready\n$`)

// checkHealthAnswer checks that an answer is well formed: 200 with at least
// required workers ready, 500 with fewer. It returns the ready count.
func checkHealthAnswer(h health, err error, required int) (int, error) {
	if err != nil {
		return 0, err
	}
	m := healthBody.FindStringSubmatch(h.body)
	if m == nil {
		return 0, fmt.Errorf("health body %q is not \"<n> workers ready\\n\"", h.body)
	}
	n, _ := strconv.Atoi(m[1])
	want := 500
	if n >= required {
		want = 200
	}
	if h.code != want {
		return n, fmt.Errorf("health %d %q with --require %d, want %d", h.code, h.body, required, want)
	}
	return n, nil
}

// errorList collects failures seen by goroutines, which must not end the
// test themselves.
type errorList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorList) add(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

// report fails the test with the first few errors, if there were any.
func (l *errorList) report(t *testing.T, what string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) == 0 {
		return
	}
	msgs := make([]string, 0, 5)
	for _, err := range l.errs[:min(5, len(l.errs))] {
		msgs = append(msgs, err.Error())
	}
	t.Errorf("%s: %d errors, the first:\n%s", what, len(l.errs), strings.Join(msgs, "\n"))
}

// attempt is one message sent to notifyd on a fresh connection, followed by
// a barrier.
type attempt struct {
	tried      bool
	sent       bool  // the message itself went into notifyd's queue
	err        error // from the connection, the send or the barrier; nil once acknowledged
	start, end time.Time
}

// outage is the time from just before notifyd was sent SIGKILL until its
// successor had logged that it started.
type outage struct{ down, up time.Time }

// overlaps reports whether the attempt was under way during any outage.
func (a attempt) overlaps(outages []outage) bool {
	for _, o := range outages {
		if !a.end.Before(o.down) && !a.start.After(o.up) {
			return true
		}
	}
	return false
}

// definite reports whether the attempt was acknowledged by a notifyd that
// did not die meanwhile, so that the acknowledgement means the message was
// applied and its state file written or removed.
func (a attempt) definite(outages []outage) bool {
	return a.tried && a.err == nil && !a.overlaps(outages)
}

// churnWorker is one sleep process of a workerChurn and what was sent about
// it. Its owner goroutine alone writes it, until it parks it.
type churnWorker struct {
	cmd      *exec.Cmd
	pid      int
	ready    attempt // READY=1
	stopping attempt // STOPPING=1; the process lives on after it
	killed   bool    // SIGKILLed and reaped
}

// workerChurn runs goroutines that each start sleep workers, register them
// with READY=1 and, at random, stop them with STOPPING=1 or SIGKILL and reap
// them. Every message goes on a fresh connection and waits for a barrier,
// and every step is recorded for the test to compare with what notifyd
// ends up with.
type workerChurn struct {
	socket string
	pause  time.Duration // between two steps of one goroutine
	done   chan struct{}
	stop   func() // ends the goroutines and waits for them; idempotent
	wg     sync.WaitGroup

	mu      sync.Mutex
	workers []*churnWorker // every worker ever started
	parked  []*churnWorker // live, handed over to the test, never touched by the churn again
	errs    errorList      // a process that could not be started
}

// Bounds of the churn: each goroutine keeps at most churnLive workers it may
// still stop or kill and churnStopped stopped ones alive, and at most
// churnParked wait for the test.
const (
	churnLive    = 16
	churnStopped = 16
	churnParked  = 32
)

// startChurn starts n churn goroutines against the notify socket, each
// pausing between its steps. The end of the test stops them and kills
// every worker still alive.
func startChurn(t *testing.T, socket string, n int, pause time.Duration) *workerChurn {
	t.Helper()
	c := &workerChurn{socket: socket, pause: pause, done: make(chan struct{})}
	c.stop = sync.OnceFunc(func() { close(c.done); c.wg.Wait() })
	t.Cleanup(c.killAll)
	seed := rand.Uint64()
	t.Logf("churn seed %d", seed)
	for i := range n {
		c.wg.Go(func() { c.run(rand.New(rand.NewPCG(seed, uint64(i)))) })
	}
	return c
}

// killAll stops the churn and kills every worker still alive.
func (c *workerChurn) killAll() {
	c.stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.workers {
		if !w.killed {
			w.kill()
		}
	}
}

func (c *workerChurn) stopped() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// start starts a worker and records it.
func (c *workerChurn) start() (*churnWorker, error) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &churnWorker{cmd: cmd, pid: cmd.Process.Pid}
	c.mu.Lock()
	c.workers = append(c.workers, w)
	c.mu.Unlock()
	return w, nil
}

// kill SIGKILLs the worker and reaps it.
func (w *churnWorker) kill() {
	w.cmd.Process.Kill()
	w.cmd.Wait()
	w.killed = true
}

// send sends payload on a fresh connection and waits for the barrier.
func (c *workerChurn) send(payload string) attempt {
	a := attempt{tried: true, start: time.Now()}
	cl, err := protocol.Dial(c.socket)
	if err != nil {
		a.err = err
		a.end = time.Now()
		return a
	}
	defer cl.Close()
	if a.err = cl.Send([]byte(payload), 10*time.Second); a.err == nil {
		a.sent = true
		a.err = cl.Barrier(20 * time.Second)
	}
	a.end = time.Now()
	return a
}

func (c *workerChurn) run(r *rand.Rand) {
	var live, stopped []*churnWorker
	for !c.stopped() {
		switch n := r.IntN(10); {
		case n < 5 || len(live) == 0:
			w, err := c.start()
			if err != nil {
				c.errs.add(fmt.Errorf("start a worker: %w", err))
				return
			}
			w.ready = c.send(fmt.Sprintf("READY=1\nPID=%d", w.pid))
			if w.ready.err != nil {
				time.Sleep(5 * time.Millisecond) // notifyd is down
			}
			if r.IntN(8) == 0 && c.park(w) {
				continue
			}
			live = append(live, w)
		case n < 7:
			i := r.IntN(len(live))
			w := live[i]
			live = slices.Delete(live, i, i+1)
			w.stopping = c.send(fmt.Sprintf("STOPPING=1\nPID=%d", w.pid))
			stopped = append(stopped, w)
		default:
			i := r.IntN(len(live))
			live[i].kill()
			live = slices.Delete(live, i, i+1)
		}
		for len(live) > churnLive {
			live[0].kill()
			live = live[1:]
		}
		for len(stopped) > churnStopped {
			stopped[0].kill()
			stopped = stopped[1:]
		}
		time.Sleep(c.pause)
	}
}

// park hands w over to the test, if its READY=1 was acknowledged and
// there is room.
func (c *workerChurn) park(w *churnWorker) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.ready.err != nil || len(c.parked) >= churnParked {
		return false
	}
	c.parked = append(c.parked, w)
	return true
}

// provedParked counts the parked workers whose READY=1 is proved by the
// outages so far, all of which have ended.
func (c *workerChurn) provedParked(outages []outage) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, w := range c.parked {
		if w.ready.definite(outages) {
			n++
		}
	}
	return n
}

// killParked SIGKILLs up to n parked workers whose READY=1 is proved by
// the outages so far, the last of which has not ended, and returns them.
// A parked worker whose READY=1 an outage has made unprovable is no use to
// the test any more: it leaves the parked ones, alive.
func (c *workerChurn) killParked(n int, outages []outage) []*churnWorker {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*churnWorker
	c.parked = slices.DeleteFunc(c.parked, func(w *churnWorker) bool {
		switch {
		case !w.ready.definite(outages):
			return true
		case len(out) == n:
			return false
		}
		w.kill()
		out = append(out, w)
		return true
	})
	return out
}

// startUnregistered starts n workers that send nothing.
func (c *workerChurn) startUnregistered(t *testing.T, n int) {
	t.Helper()
	for range n {
		if _, err := c.start(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFaultKill9DuringRegistrationChurn SIGKILLs notifyd while workers
// register, stop and die around it, kills registered workers and starts
// unregistered ones while it is down, restarts it on the same socket and
// state directory, and checks that the registry and the state files hold
// exactly the live workers whose registration stands.
//
// What counts as standing has one honest ambiguity. A datagram that sits in
// notifyd's socket queue when notifyd dies is lost, yet the kernel closes
// the barrier descriptor queued behind it, so its sender sees an
// acknowledgement. A message notifyd applied in memory is lost as well if
// its state file was not written yet. An acknowledgement therefore proves
// the message applied, and its state file written or removed, only when it
// was seen before the SIGKILL was sent, or when the message was sent after
// the successor had started. The test timestamps every message and every
// outage, and holds each live worker to what can be proved:
//
//   - READY=1 proved and no STOPPING=1 sent: present.
//   - STOPPING=1 proved: absent, whatever became of READY=1.
//   - READY=1 never sent (notifyd was down when it tried): absent.
//   - anything else, a READY=1 or STOPPING=1 that straddled a kill: may be
//     present or absent.
//
// A worker that was killed is absent, without exception, and so is every
// pid that is not a live worker of the test. The state files must then
// name exactly the pids the registry does.
func TestFaultKill9DuringRegistrationChurn(t *testing.T) {
	rounds, phase := 2, 800*time.Millisecond
	if *long {
		rounds, phase = 20, 3*time.Second
	}
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	c := startChurn(t, d.socket, 4, 0)

	var outages []outage
	victims := 0
	for round := range rounds {
		time.Sleep(phase) // the churn's run between two kills
		// However slow the machine, the kill meets a registration it can
		// be held to.
		waitFor(t, "a parked worker proved registered", func() bool { return c.provedParked(outages) > 0 })
		down := time.Now()
		d.stop(t, syscall.SIGKILL)

		// Registered workers die while nobody watches: their files stay
		// behind for the successor to judge.
		files := stateFiles(t, dir)
		killed := c.killParked(3, append(slices.Clip(outages), outage{down: down, up: time.Now().Add(time.Hour)}))
		if len(killed) == 0 {
			t.Fatalf("round %d: no parked worker is proved registered; the churn made no progress", round)
		}
		for _, w := range killed {
			if !slices.Contains(files, w.pid) {
				t.Fatalf("round %d: worker %d is proved registered, but has no state file (files %v)", round, w.pid, files)
			}
		}
		victims += len(killed)
		c.startUnregistered(t, 3)
		time.Sleep(phase / 4) // the churn meets a socket nobody reads

		d = startNotifyd(t, dir)
		outages = append(outages, outage{down: down, up: time.Now()})
	}
	time.Sleep(phase)
	c.stop()
	c.errs.report(t, "churn")

	// From here on only the test goroutine reads the record.
	must, may := map[int]bool{}, map[int]bool{}
	var (
		readies, stops, kills, lateErrors, straddled int
		dead                                         []int
	)
	for _, w := range c.workers {
		for _, a := range []attempt{w.ready, w.stopping} {
			if a.tried && a.err != nil && !a.overlaps(outages) {
				lateErrors++
				t.Errorf("worker %d: a message away from any outage failed: %v", w.pid, a.err)
			}
		}
		if w.ready.sent {
			readies++
		}
		if w.stopping.sent {
			stops++
		}
		if w.ready.sent && w.ready.overlaps(outages) || w.stopping.sent && w.stopping.overlaps(outages) {
			straddled++
		}
		if w.killed {
			kills++
			dead = append(dead, w.pid)
			continue
		}
		switch {
		case !w.ready.sent:
		case w.stopping.sent && w.stopping.definite(outages):
		case !w.stopping.sent && w.ready.definite(outages):
			must[w.pid] = true
		default:
			may[w.pid] = true
		}
	}
	if lateErrors > 0 {
		t.FailNow()
	}

	var got []int
	defer func() {
		if !t.Failed() {
			return
		}
		var missing, deadPresent, otherPresent []int
		for pid := range must {
			if !slices.Contains(got, pid) {
				missing = append(missing, pid)
			}
		}
		for _, pid := range got {
			switch {
			case must[pid] || may[pid]:
			case slices.Contains(dead, pid):
				deadPresent = append(deadPresent, pid)
			default:
				otherPresent = append(otherPresent, pid)
			}
		}
		t.Logf("last /status pids %v\nproved registered but missing: %v\nkilled but present: %v\nstopped or never registered but present: %v",
			got, missing, deadPresent, otherPresent)
	}()
	waitFor(t, "the registry to hold the proved workers and no other", func() bool {
		got = statusPids(t, d)
		for pid := range must {
			if !slices.Contains(got, pid) {
				return false
			}
		}
		for _, pid := range got {
			if !must[pid] && !may[pid] {
				return false
			}
		}
		return true
	})
	for _, pid := range got {
		if !alive(pid) {
			t.Fatalf("registered pid %d is not a live process", pid)
		}
	}
	barrier(t, dialNotifyd(t, d.socket))
	slices.Sort(got)
	if files := stateFiles(t, dir); !slices.Equal(files, got) {
		t.Fatalf("state files for %v, but the registry holds %v", files, got)
	}
	if again := statusPids(t, d); !slices.Equal(again, got) {
		t.Fatalf("the registry moved from %v to %v with nothing going on", got, again)
	}
	code := 500
	if len(got) >= 1 {
		code = 200
	}
	wantHealth(t, d, code, fmt.Sprintf("%d workers ready\n", len(got)))

	mayPresent := 0
	for _, pid := range got {
		if may[pid] {
			mayPresent++
		}
	}
	t.Logf("%d rounds: %d workers, %d READY=1 and %d STOPPING=1 sent, %d workers with a message that straddled a kill; %d killed, %d of them registered and killed while notifyd was down",
		rounds, len(c.workers), readies, stops, straddled, kills, victims)
	t.Logf("at the end: %d live workers proved registered, all present; %d live workers whose messages straddled a kill, %d of them present",
		len(must), len(may), mayPresent)
}

// wantStateFileContent checks that the state file of w says what /status
// says of it: its pid, its start time in /proc and the same ready time.
func wantStateFileContent(t *testing.T, d *daemon, dir string, w *exec.Cmd) {
	t.Helper()
	pid := w.Process.Pid
	var readyAt string
	list, _ := statusDoc(t, d)["workers"].([]any)
	for _, e := range list {
		m := e.(map[string]any)
		if m["pid"].(json.Number).String() == strconv.Itoa(pid) {
			readyAt, _ = m["ready_at"].(string)
		}
	}
	want, err := time.Parse(time.RFC3339Nano, readyAt)
	if err != nil {
		t.Fatalf("/status ready_at of %d is %q: %v", pid, readyAt, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ".gunicorn.worker."+strconv.Itoa(pid)))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || lines[0] != "PID="+strconv.Itoa(pid) || lines[1] != "STARTTIME="+procStartTime(t, pid) ||
		!strings.HasPrefix(lines[2], "READY_AT=") {
		t.Fatalf("state file of %d holds %q, want PID=%d, STARTTIME=%s and READY_AT=", pid, lines, pid, procStartTime(t, pid))
	}
	got, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(lines[2], "READY_AT="))
	if err != nil || !got.Equal(want) {
		t.Fatalf("state file of %d says %s, /status says ready_at %s (%v)", pid, lines[2], readyAt, err)
	}
}

// fillInodes creates empty files in dir until no inode is left, and returns
// a function that removes them. Their names are not state file names.
func fillInodes(t *testing.T, dir string) (free func()) {
	t.Helper()
	var paths []string
	for i := 0; ; i++ {
		path := filepath.Join(dir, fmt.Sprintf("filler.%d", i))
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if errors.Is(err, unix.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		paths = append(paths, path)
	}
	if len(paths) == 0 {
		t.Fatalf("%s had no inode left to fill", dir)
	}
	return func() {
		t.Helper()
		for _, p := range paths {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// fillBlocks writes one file in dir until no block is left, and returns a
// function that removes it.
func fillBlocks(t *testing.T, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("fill %s: %v, want ENOSPC in the end", dir, err)
	}
	return func() {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFaultStateDirFullThenReadOnly puts the state directory on a small
// tmpfs and takes it away three ways: no inode left, no block left, and
// read-only. Each time the health answer stays right from memory, the
// failed writes and removals are counted and retried, the log says so once,
// and once the directory takes files again they catch up by themselves,
// without a message sent.
func TestFaultStateDirFullThenReadOnly(t *testing.T) {
	needRoot(t, "mount a tmpfs for the state directory")
	mnt := shortDir(t)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=256k,nr_inodes=64,mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	d := startNotifyd(t, shortDir(t), "--dir", mnt, "--require", "4")

	fileErrors := func() int { return int(metricSamples(t, d)["notifyd_state_file_errors_total"]) }
	notInStep := regexp.MustCompile(`msg="state files not in step with the registry`)
	inStep := regexp.MustCompile(`msg="state files in step with the registry again"`)
	wantFiles := func(what string, workers ...*exec.Cmd) {
		t.Helper()
		if got, want := stateFiles(t, mnt), sortedPids(workers...); !slices.Equal(got, want) {
			t.Fatalf("%s: state files for %v, want %v", what, got, want)
		}
	}
	wantRegistry := func(what string, workers ...*exec.Cmd) {
		t.Helper()
		if got, want := statusPids(t, d), sortedPids(workers...); !slices.Equal(got, want) {
			t.Fatalf("%s: /status pids %v, want %v", what, got, want)
		}
	}
	// failing checks that writes keep failing and are retried, and that the
	// log said so once for each of the episodes so far.
	failing := func(what string, episode int) {
		t.Helper()
		n := fileErrors()
		if n == 0 {
			t.Fatalf("%s: notifyd_state_file_errors_total is 0", what)
		}
		waitFor(t, what+": failed state files retried", func() bool { return fileErrors() > n })
		if got := countLines(d.log.String(), notInStep); got != episode {
			t.Fatalf("%s: %d log lines say the state files are not in step, want %d", what, got, episode)
		}
		if got := countLines(d.log.String(), inStep); got != episode-1 {
			t.Fatalf("%s: %d log lines say they are in step again, want %d", what, got, episode-1)
		}
	}
	catchUp := func(what string, episode int, workers ...*exec.Cmd) {
		t.Helper()
		want := sortedPids(workers...)
		var got []int
		waitFor(t, what+": state files to catch up", func() bool {
			got = stateFiles(t, mnt)
			return slices.Equal(got, want)
		})
		waitFor(t, what+": the log to say the files are in step again", func() bool {
			return countLines(d.log.String(), inStep) == episode
		})
		if got := countLines(d.log.String(), notInStep); got != episode {
			t.Fatalf("%s: %d log lines say the state files are not in step, want %d", what, got, episode)
		}
	}

	a, b := sleeper(t), sleeper(t)
	registerReady(t, d, a, b)
	wantHealth(t, d, 500, "2 workers ready\n")
	wantFiles("on an empty tmpfs", a, b)
	if n := fileErrors(); n != 0 {
		t.Fatalf("notifyd_state_file_errors_total %d before any fault", n)
	}

	// No inode left: creating the temporary file fails.
	free := fillInodes(t, mnt)
	c1, c2 := sleeper(t), sleeper(t)
	registerReady(t, d, c1, c2)
	wantHealth(t, d, 200, "4 workers ready\n")
	wantRegistry("no inode left", a, b, c1, c2)
	wantFiles("no inode left", a, b)
	failing("no inode left", 1)
	free()
	catchUp("inodes freed", 1, a, b, c1, c2)
	for _, w := range []*exec.Cmd{a, b, c1, c2} {
		wantStateFileContent(t, d, mnt, w)
	}

	// No block left: the temporary file is created, writing to it fails.
	free = fillBlocks(t, mnt)
	e := sleeper(t)
	registerReady(t, d, e)
	wantHealth(t, d, 200, "5 workers ready\n")
	wantRegistry("no block left", a, b, c1, c2, e)
	wantFiles("no block left", a, b, c1, c2)
	failing("no block left", 2)
	free()
	catchUp("blocks freed", 2, a, b, c1, c2, e)
	wantStateFileContent(t, d, mnt, e)

	// Read-only: neither a new file nor a removal goes through.
	if err := unix.Mount("", mnt, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", mnt, err)
	}
	f := sleeper(t)
	registerReady(t, d, f)
	mustNotify(t, "--socket", d.socket, "--stopping", "--pid", pidString(a))
	wantHealth(t, d, 200, "5 workers ready\n")
	wantRegistry("read-only", b, c1, c2, e, f)
	wantFiles("read-only", a, b, c1, c2, e)
	failing("read-only", 3)
	if err := unix.Mount("", mnt, "", unix.MS_REMOUNT, ""); err != nil {
		t.Fatalf("remount %s read-write: %v", mnt, err)
	}
	catchUp("read-write again", 3, b, c1, c2, e, f)
	wantStateFileContent(t, d, mnt, f)
	wantRegistry("read-write again", b, c1, c2, e, f)
	wantHealth(t, d, 200, "5 workers ready\n")
	t.Logf("%d failed state file writes and removals counted", fileErrors())
}

// badClients hold connections to notifyd's health port open the way broken
// or hostile clients would, each opening another as soon as notifyd cuts it
// off, until done is closed.
type badClients struct {
	addr string
	done chan struct{}
	wg   sync.WaitGroup
	errs errorList

	opened  atomic.Int64 // clients that have connected
	cutOnce atomic.Int64 // clients that notifyd has cut off at least once
	cuts    atomic.Int64 // connections notifyd has cut off
}

// hold keeps one client's connection open. An idle client sends nothing; a
// slow one sends part of a request and then one more byte every second,
// never finishing the headers.
func (b *badClients) hold(slow bool) {
	const tick = 250 * time.Millisecond
	first, everCut := true, false
	buf := make([]byte, 512)
	for {
		conn, err := net.DialTimeout("tcp", b.addr, 10*time.Second)
		if err != nil {
			b.errs.add(err)
			return
		}
		if first {
			b.opened.Add(1)
			first = false
		}
		if slow {
			if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: notifyd\r\nX-Slow: ")); err != nil {
				b.errs.add(err)
				conn.Close()
				return
			}
		}
		cut := false
		for ticks := 1; !cut; ticks++ {
			select {
			case <-b.done:
				conn.Close()
				return
			default:
			}
			conn.SetReadDeadline(time.Now().Add(tick))
			_, err := conn.Read(buf)
			switch {
			case !errors.Is(err, os.ErrDeadlineExceeded):
				// End of stream, a reset, or an answer to a request never
				// finished: notifyd has given up on this client.
				cut = true
			case slow && ticks%4 == 0:
				_, err := conn.Write([]byte("a"))
				cut = err != nil
			}
		}
		conn.Close()
		b.cuts.Add(1)
		if !everCut {
			b.cutOnce.Add(1)
			everCut = true
		}
	}
}

// TestFaultIdleAndSlowHealthClients opens 200 idle connections and 200
// that send their headers one byte at a time on the health port, and checks
// that health checks on new connections are all answered meanwhile, that
// notifyd cuts the bad clients off by itself, and that it holds no
// descriptor of theirs once they are gone. notifyd is a plain build here,
// so that the latencies it logs (and does not assert) are a production
// binary's rather than the race detector's.
func TestFaultIdleAndSlowHealthClients(t *testing.T) {
	// Fewer than httpapi.MaxConns, so that notifyd holds them all until its
	// timeouts cut them off (TestHostileIdleKeepAliveConnections has more).
	const idle, slow, checks, curls = 200, 200, 200, 20
	curl := need(t, "curl")
	raiseNoFile(t, idle+slow+1024)
	d := startPlainNotifyd(t, shortDir(t))
	registerReady(t, d, sleeper(t))
	pid := d.cmd.Process.Pid
	base := fdCount(t, pid)
	if h, err := fetchHealth(d); err != nil || h.code != 200 || h.body != "1 workers ready\n" {
		t.Fatalf("health = %+v (%v), want 200 \"1 workers ready\\n\"", h, err)
	}
	waitFDCount(t, pid, base)

	bad := &badClients{addr: d.addr, done: make(chan struct{})}
	stop := sync.OnceFunc(func() { close(bad.done); bad.wg.Wait() })
	t.Cleanup(stop)
	for i := range idle + slow {
		bad.wg.Go(func() { bad.hold(i >= idle) })
	}
	waitFor(t, "every bad client to connect", func() bool { return bad.opened.Load() == idle+slow })
	waitFor(t, "notifyd to hold every bad client's connection", func() bool {
		return fdCount(t, pid) >= base+idle+slow
	})
	held := fdCount(t, pid) - base

	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var took []time.Duration
	for i := range checks {
		start := time.Now()
		resp, err := client.Get("http://" + d.addr + "/")
		if err != nil {
			t.Fatalf("health check %d with %d bad clients: %v", i, idle+slow, err)
		}
		var body bytes.Buffer
		_, err = body.ReadFrom(resp.Body)
		resp.Body.Close()
		took = append(took, time.Since(start))
		if err != nil || resp.StatusCode != 200 || body.String() != "1 workers ready\n" {
			t.Fatalf("health check %d = %d %q (%v), want 200 \"1 workers ready\\n\"", i, resp.StatusCode, body.String(), err)
		}
	}
	var curlTook []time.Duration
	for i := range curls {
		start := time.Now()
		out, err := exec.Command(curl, "-sS", "--max-time", "10", "-w", "\n%{http_code}", "http://"+d.addr+"/").CombinedOutput()
		curlTook = append(curlTook, time.Since(start))
		if err != nil || string(out) != "1 workers ready\n\n200" {
			t.Fatalf("curl check %d = %q (%v), want \"1 workers ready\\n\" and 200", i, out, err)
		}
	}
	during := fdCount(t, pid) - base
	t.Logf("notifyd held %d bad connections before the checks, %d after", held, during)
	t.Logf("health checks (net/http, a new connection each): %s", latencies(took))
	t.Logf("health checks (curl, process start included): %s", latencies(curlTook))

	// notifyd's header timeout cuts every one of them off; each reconnects
	// until the test ends.
	waitFor(t, "notifyd to cut off every bad client at least once", func() bool {
		return bad.cutOnce.Load() == idle+slow
	})
	stop()
	bad.errs.report(t, "bad clients")
	t.Logf("notifyd cut off bad clients %d times", bad.cuts.Load())
	waitFDCount(t, pid, base)
}

// floodKind is one sort of datagram the flood sends, with the result
// notifyd must count it under.
type floodKind struct {
	name    string
	payload []byte
	result  string
}

// TestFaultDatagramFlood floods the notify socket with invalid datagrams
// from several goroutines while 200 workers register with blocking sends
// and barriers, and health checks run throughout. Every registration must
// hold, every datagram that entered the queue must be counted under its
// reason, the health check must always answer consistently, notifyd's
// memory must stay bounded and it must hold no descriptor beyond one pidfd
// per worker.
func TestFaultDatagramFlood(t *testing.T) {
	const (
		workers  = 200
		senders  = 4 // goroutines registering workers
		flooders = 3 // goroutines sending invalid datagrams
		// rssBound is the most notifyd may hold resident during the flood.
		// The race-enabled notifyd measured 35 MiB idle and a plateau of
		// 90 to 93 MiB under a flood of about 20,000 datagrams a second on
		// two cores: reached within the first second, and no higher after
		// 30 s and 600,000 datagrams. GOGC=400 lets the heap grow to five
		// times what is live, and the race detector's shadow memory grows
		// with it. The bound leaves 70 MiB over the plateau for a slower
		// collector on a busy machine; keeping as little as 1 KiB of each
		// rejected datagram would pass it within the 3 s run, and 128 bytes
		// within the 30 s one.
		rssBound = 160 << 10 // KiB
	)
	duration := 3 * time.Second
	if *long {
		duration = 30 * time.Second
	}
	d := startNotifyd(t, shortDir(t), "--require", strconv.Itoa(workers))
	pid := d.cmd.Process.Pid
	var ws []*exec.Cmd
	for range workers {
		ws = append(ws, sleeper(t))
	}

	// A pid no process can have: pids stay below pid_max.
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	noPid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || noPid > protocol.MaxPID {
		noPid = goneProcess(t)
	}
	kinds := []floodKind{
		{"not an assignment", []byte("\x01\x02 garbage"), "malformed"},
		{"larger than 4096 bytes", []byte("READY=1\nX_PAD=" + strings.Repeat("a", 5000)), "too_large"},
		{"READY=2", []byte("READY=2"), "bad_value"},
		{"PID=abc", []byte("READY=1\nPID=abc"), "bad_value"},
		{"a NUL byte", []byte("READY=1\x00PID=1"), "nul_byte"},
		{"PID and MAINPID disagree", []byte("READY=1\nPID=1\nMAINPID=2"), "conflict"},
		{"a pid no process has", []byte(fmt.Sprintf("READY=1\nPID=%d", noPid)), "no_such_process"},
		{"BARRIER=1 without a descriptor", []byte("BARRIER=1"), "bad_barrier"},
	}

	c := dialNotifyd(t, d.socket)
	barrier(t, c)
	base := fdCount(t, pid)
	if h, err := fetchHealth(d); err != nil || h.code != 500 || h.body != "0 workers ready\n" {
		t.Fatalf("health = %+v (%v), want 500 \"0 workers ready\\n\"", h, err)
	}
	waitFDCount(t, pid, base)
	rssStart, err := rssKiB(pid)
	if err != nil {
		t.Fatal(err)
	}

	var (
		done    = make(chan struct{}) // ends the flood, the health checks and the sampling
		wg      sync.WaitGroup
		errs    errorList
		sent    = make([]atomic.Int64, len(kinds))
		dropped atomic.Int64
	)
	stop := sync.OnceFunc(func() { close(done); wg.Wait() })
	t.Cleanup(stop)
	for g := range flooders {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		// A send waits a moment for room in the queue rather than spinning,
		// which would take the CPU notifyd needs to empty it.
		tv := unix.NsecToTimeval((10 * time.Millisecond).Nanoseconds())
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: d.socket})
		if err == nil {
			err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		}
		if err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		wg.Go(func() {
			defer unix.Close(fd)
			for i := g; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				k := i % len(kinds)
				switch err := unix.Send(fd, kinds[k].payload, 0); {
				case err == nil:
					sent[k].Add(1)
				case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
					dropped.Add(1) // the queue stayed full: dropping is the point
				default:
					errs.add(fmt.Errorf("flood: send %s: %w", kinds[k].name, err))
					return
				}
			}
		})
	}

	var (
		mu      sync.Mutex
		answers []time.Duration
		rss     []int
	)
	wg.Go(func() {
		last := 0
		for {
			select {
			case <-done:
				return
			default:
			}
			start := time.Now()
			h, err := fetchHealth(d)
			took := time.Since(start)
			n, err := checkHealthAnswer(h, err, workers)
			switch {
			case err != nil:
				errs.add(fmt.Errorf("health during the flood: %w", err))
			case n < last || n > workers:
				errs.add(fmt.Errorf("health during the flood: %d workers ready after %d, want a count that only grows up to %d", n, last, workers))
			}
			last = max(last, n)
			mu.Lock()
			answers = append(answers, took)
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for {
			kib, err := rssKiB(pid)
			if err != nil {
				errs.add(err)
				return
			}
			mu.Lock()
			rss = append(rss, kib)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})

	// The registrations are spread over the flood, each a blocking send
	// followed by a barrier, as the gunicorn hook and notify do.
	start := time.Now()
	var registering sync.WaitGroup
	clients := make([]*protocol.Client, senders)
	for i := range clients {
		clients[i] = dialNotifyd(t, d.socket)
	}
	for s := range senders {
		registering.Go(func() {
			share := workers / senders
			pace := duration / time.Duration(share)
			for i := s * share; i < (s+1)*share; i++ {
				time.Sleep(pace / 2)
				msg := fmt.Sprintf("READY=1\nPID=%d", ws[i].Process.Pid)
				if err := clients[s].Send([]byte(msg), 10*time.Second); err != nil {
					errs.add(fmt.Errorf("register %d: %w", ws[i].Process.Pid, err))
					continue
				}
				if err := clients[s].Barrier(20 * time.Second); err != nil {
					errs.add(fmt.Errorf("register %d: %w", ws[i].Process.Pid, err))
				}
				time.Sleep(pace / 2)
			}
		})
	}
	registering.Wait()
	if left := time.Until(start.Add(duration)); left > 0 {
		time.Sleep(left)
	}
	stop()
	elapsed := time.Since(start)
	errs.report(t, "during the flood")
	if t.Failed() {
		t.FailNow()
	}

	// Everything the flood got into the queue is ahead of this barrier.
	barrier(t, c)
	want := map[string]int{"accepted": workers, "barrier": 1 + workers + 1}
	total := 0
	for k := range kinds {
		want[kinds[k].result] += int(sent[k].Load())
		total += int(sent[k].Load())
	}
	if got := messageCounts(t, d); !maps.Equal(got, want) {
		t.Fatalf("notifyd_messages_total by result %v, want %v", got, want)
	}
	wantHealth(t, d, 200, fmt.Sprintf("%d workers ready\n", workers))
	if got, want := statusPids(t, d), sortedPids(ws...); !slices.Equal(got, want) {
		t.Fatalf("/status lists %d workers, want all %d registered", len(got), len(want))
	}
	if got, want := stateFiles(t, d.dir), sortedPids(ws...); !slices.Equal(got, want) {
		t.Fatalf("%d state files, want one for each of the %d workers", len(got), len(want))
	}

	mu.Lock()
	peak := slices.Max(rss)
	half := len(rss) / 2
	t.Logf("notifyd VmRSS peak in the first half of the flood %d KiB, in the second %d KiB", slices.Max(rss[:half]), slices.Max(rss[half:]))
	t.Logf("flood of %s: %d invalid datagrams queued (%d/s), %d dropped at a full queue; %d workers registered",
		elapsed.Round(time.Millisecond), total, int(float64(total)/elapsed.Seconds()), dropped.Load(), workers)
	t.Logf("health during the flood: %s", latencies(answers))
	t.Logf("notifyd VmRSS: %d KiB before, peak %d KiB over %d samples, bound %d KiB", rssStart, peak, len(rss), rssBound)
	mu.Unlock()
	if peak > rssBound {
		t.Fatalf("notifyd's VmRSS reached %d KiB during the flood, above the bound of %d KiB", peak, rssBound)
	}

	// One pidfd per registered worker, and nothing else left over.
	closeIdleHTTP()
	waitFDCount(t, pid, base+workers)
	for _, w := range ws {
		w.Process.Kill()
		w.Wait()
	}
	waitHealth(t, d, 500, "0 workers ready\n")
	closeIdleHTTP()
	waitFDCount(t, pid, base)
}
