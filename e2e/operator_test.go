package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
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

	"github.com/notifyd/notifyd/internal/proctest"
)

// drainMark is the file that keeps a drain across restarts of notifyd.
const drainMark = ".notifyd.draining"

// httpGet fetches url and returns its status code and body.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	h := getHealth(t, url)
	return h.code, h.body
}

// statusDoc fetches /status and decodes it, with numbers kept exact.
func statusDoc(t *testing.T, d *daemon) map[string]any {
	t.Helper()
	code, body := httpGet(t, "http://"+d.addr+"/status")
	if code != 200 {
		t.Fatalf("GET /status = %d %q, want 200", code, body)
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("decode /status %q: %v", body, err)
	}
	return doc
}

// wantStatusFields checks top-level fields of /status. Numbers are given as ints.
func wantStatusFields(t *testing.T, d *daemon, want map[string]any) {
	t.Helper()
	doc := statusDoc(t, d)
	for key, w := range want {
		if n, ok := w.(int); ok {
			w = json.Number(strconv.Itoa(n))
		}
		if doc[key] != w {
			t.Fatalf("/status %s = %#v, want %#v (document %v)", key, doc[key], w, doc)
		}
	}
}

// statusPids lists the pids /status shows, in its order.
func statusPids(t *testing.T, d *daemon) []int {
	t.Helper()
	list, ok := statusDoc(t, d)["workers"].([]any)
	if !ok {
		t.Fatal("/status workers is not an array")
	}
	var pids []int
	for _, w := range list {
		n, err := w.(map[string]any)["pid"].(json.Number).Int64()
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, int(n))
	}
	return pids
}

// registerReady registers each worker with notify, which returns once notifyd has
// processed the message.
func registerReady(t *testing.T, d *daemon, workers ...*exec.Cmd) {
	t.Helper()
	for _, w := range workers {
		if code, out := notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid)); code != 0 || out != "" {
			t.Fatalf("notify --ready = %d %q, want 0 and no output", code, out)
		}
	}
}

// notifyEnv runs notify with extra environment variables and returns its
// exit code and combined output.
func notifyEnv(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "notify"), args...)
	cmd.Env = append(os.Environ(), env...)
	return exitCode(t, cmd)
}

// drainMarked reports whether the drain mark is in dir.
func drainMarked(t *testing.T, dir string) bool {
	t.Helper()
	_, err := os.Lstat(filepath.Join(dir, drainMark))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func TestOperatorExpectInStatusAndVerbose(t *testing.T) {
	tests := []struct {
		name               string
		env                []string
		args               []string
		required, expected int
	}{
		{"--expect 4 --require 2", nil, []string{"--expect", "4", "--require", "2"}, 2, 4},
		{"NOTIFYD_EXPECT 4 --require 2", []string{"NOTIFYD_EXPECT=4"}, []string{"--require", "2"}, 2, 4},
		{"--expect defaults to --require", nil, []string{"--require", "2"}, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			d := launch(t, dir, tt.env, nil, tt.args...)
			d.waitStarted(t)
			wantStatusFields(t, d, map[string]any{"ready": 0, "required": tt.required, "expected": tt.expected, "healthy": false, "draining": false})
			code, body := httpGet(t, "http://"+d.addr+"/?verbose")
			want := fmt.Sprintf("[-]workers failed: 0/%d ready\n[-]capacity failed: 0/%d expected (does not affect the status)\n[+]activity ok: 0/0 workers busy, 0 requests in flight\nhealthz check failed\n", tt.required, tt.expected)
			if code != 500 || body != want {
				t.Fatalf("GET /?verbose = %d %q, want 500 %q", code, body, want)
			}

			a, b := sleeper(t), sleeper(t)
			registerReady(t, d, a, b)
			wantStatusFields(t, d, map[string]any{"ready": 2, "required": tt.required, "expected": tt.expected, "healthy": true, "draining": false})
			if got, want := statusPids(t, d), sortedPids(a, b); !slices.Equal(got, want) {
				t.Fatalf("/status pids = %v, want %v", got, want)
			}
			code, body = httpGet(t, "http://"+d.addr+"/?verbose")
			capacity := fmt.Sprintf("[+]capacity ok: 2/%d expected\n", tt.expected)
			if tt.expected > 2 {
				capacity = fmt.Sprintf("[-]capacity failed: 2/%d expected (does not affect the status)\n", tt.expected)
			}
			want = fmt.Sprintf("[+]workers ok: 2/%d ready\n%s[+]activity ok: 0/2 workers busy, 0 requests in flight\nhealthz check passed\n", tt.required, capacity)
			if code != 200 || body != want {
				t.Fatalf("GET /?verbose = %d %q, want 200 %q", code, body, want)
			}
		})
	}
}

// wantMetricLines checks that body has each of lines as a whole line.
func wantMetricLines(t *testing.T, body string, lines ...string) {
	t.Helper()
	have := strings.Split(body, "\n")
	for _, l := range lines {
		if !slices.Contains(have, l) {
			t.Fatalf("/metrics has no line %q:\n%s", l, body)
		}
	}
}

func TestOperatorMetricsPassPromtool(t *testing.T) {
	promtool := need(t, "promtool")
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "1", "--expect", "2")

	// One accepted READY=1, one notify for a pid that is gone, and one
	// datagram with a bad value, each followed by a barrier.
	w := sleeper(t)
	registerReady(t, d, w)
	if code, out := notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(goneProcess(t))); code != 0 || out != "" {
		t.Fatalf("notify --ready for a gone pid = %d %q, want 0 and no output", code, out)
	}
	c := dialNotifyd(t, d.socket)
	if err := c.Send([]byte("READY=2"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	barrier(t, c)

	code, body := httpGet(t, "http://"+d.addr+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d %q", code, body)
	}
	wantMetricLines(t, body,
		`notifyd_messages_total{result="accepted"} 1`,
		`notifyd_messages_total{result="barrier"} 3`,
		`notifyd_messages_total{result="no_such_process"} 1`,
		`notifyd_messages_total{result="bad_value"} 1`,
		`notifyd_workers{state="ready"} 1`,
		`notifyd_workers_required 1`,
		`notifyd_workers_expected 2`,
		`notifyd_healthy 1`,
		`notifyd_draining 0`,
		`notifyd_worker_exits_total 0`,
	)
	promtoolCheck(t, promtool, body)

	// A worker killed without STOPPING=1 counts as an exit.
	w.Process.Kill()
	w.Wait()
	waitHealth(t, d, 500, "0 workers ready\n")
	_, body = httpGet(t, "http://"+d.addr+"/metrics")
	wantMetricLines(t, body,
		`notifyd_workers{state="ready"} 0`,
		`notifyd_healthy 0`,
		`notifyd_worker_exits_total 1`,
	)
	promtoolCheck(t, promtool, body)
}

// promtoolCheck pipes body to "promtool check metrics", which must accept
// it and have nothing to say.
func promtoolCheck(t *testing.T, promtool, body string) {
	t.Helper()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("promtool check metrics = %v, output %q; want exit 0 and no output\n%s", err, out, body)
	}
}

func TestOperatorDrainSurvivesRestart(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "1")
	w := sleeper(t)
	registerReady(t, d, w)
	wantHealth(t, d, 200, "1 workers ready\n")

	if code, out := notify(t, "--socket", d.socket, "--drain"); code != 0 || out != "" {
		t.Fatalf("notify --drain = %d %q, want 0 and no output", code, out)
	}
	// notify waits for the barrier: the drain has been applied.
	wantHealth(t, d, 500, "1 workers ready, draining\n")
	wantStatusFields(t, d, map[string]any{"ready": 1, "healthy": false, "draining": true})
	if !drainMarked(t, dir) {
		t.Fatalf("no %s in %s after notify --drain", drainMark, dir)
	}

	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("notifyd exit after SIGTERM: %v", err)
	}
	d = startNotifyd(t, dir, "--require", "1")
	wantHealth(t, d, 500, "1 workers ready, draining\n")
	wantStatusFields(t, d, map[string]any{"ready": 1, "healthy": false, "draining": true})
	if !strings.Contains(d.log.String(), `msg="draining, as before the restart"`) {
		t.Fatalf("the restarted notifyd does not say it is still draining:\n%s", d.log.String())
	}

	if code, out := notify(t, "--socket", d.socket, "--undrain"); code != 0 || out != "" {
		t.Fatalf("notify --undrain = %d %q, want 0 and no output", code, out)
	}
	wantHealth(t, d, 200, "1 workers ready\n")
	wantStatusFields(t, d, map[string]any{"ready": 1, "healthy": true, "draining": false})
	if drainMarked(t, dir) {
		t.Fatalf("%s still in %s after notify --undrain", drainMark, dir)
	}
	if got := stateFiles(t, dir); !slices.Equal(got, []int{w.Process.Pid}) {
		t.Fatalf("state files for %v, want [%d]: the drain mark is not a state file", got, w.Process.Pid)
	}
}

func TestOperatorDrainBySignals(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	registerReady(t, d, sleeper(t), sleeper(t))
	wantHealth(t, d, 200, "2 workers ready\n")

	// A signal is delivered asynchronously, so the answers are polled.
	d.cmd.Process.Signal(syscall.SIGUSR1)
	waitHealth(t, d, 500, "2 workers ready, draining\n")
	wantStatusFields(t, d, map[string]any{"ready": 2, "healthy": false, "draining": true})
	if !drainMarked(t, dir) {
		t.Fatalf("no %s in %s after SIGUSR1", drainMark, dir)
	}

	d.cmd.Process.Signal(syscall.SIGUSR2)
	waitHealth(t, d, 200, "2 workers ready\n")
	wantStatusFields(t, d, map[string]any{"ready": 2, "healthy": true, "draining": false})
	if drainMarked(t, dir) {
		t.Fatalf("%s still in %s after SIGUSR2", drainMark, dir)
	}
	select {
	case <-d.done:
		t.Fatalf("notifyd exited after the drain signals: %v", d.err)
	default:
	}
}

func TestOperatorDrainFromNonRootIsRejected(t *testing.T) {
	setpriv := need(t, "setpriv")
	notifyPath := notifyForNobody(t)
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := startNotifyd(t, dir, "--require", "1", "--socket-mode", "0666")
	registerReady(t, d, sleeper(t))
	refused := regexp.MustCompile(`msg="rejected notification" .*reason=not_permitted .*sender_uid=65534\b`)

	code, out := runAsNobody(t, setpriv, notifyPath, "--socket", d.socket, "--drain")
	if code != 0 || out != "" {
		t.Fatalf("notify --drain as uid 65534 = %d %q, want 0 (processed) and no output", code, out)
	}
	wantHealth(t, d, 200, "1 workers ready\n")
	wantStatusFields(t, d, map[string]any{"ready": 1, "healthy": true, "draining": false})
	if drainMarked(t, dir) {
		t.Fatalf("%s written for a drain from uid 65534", drainMark)
	}
	waitFor(t, "a not_permitted rejection of uid 65534 in the log", func() bool {
		return countLines(d.log.String(), refused) == 1
	})

	// Nor may that user end a drain root started.
	if code, out := notify(t, "--socket", d.socket, "--drain"); code != 0 || out != "" {
		t.Fatalf("notify --drain as root = %d %q", code, out)
	}
	wantHealth(t, d, 500, "1 workers ready, draining\n")
	code, out = runAsNobody(t, setpriv, notifyPath, "--socket", d.socket, "--undrain")
	if code != 0 || out != "" {
		t.Fatalf("notify --undrain as uid 65534 = %d %q, want 0 (processed) and no output", code, out)
	}
	wantHealth(t, d, 500, "1 workers ready, draining\n")
	wantStatusFields(t, d, map[string]any{"draining": true})
	waitFor(t, "a second not_permitted rejection of uid 65534 in the log", func() bool {
		return countLines(d.log.String(), refused) == 2
	})
}

func TestOperatorNotifyCheck(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "1")
	url := "http://" + d.addr + "/"
	check := func(t *testing.T, env []string, wantCode int, wantOut string, args ...string) {
		t.Helper()
		code, out := notifyEnv(t, env, append([]string{"check"}, args...)...)
		if code != wantCode || out != wantOut {
			t.Fatalf("notify check %v with %v = %d %q, want %d %q", args, env, code, out, wantCode, wantOut)
		}
	}

	check(t, nil, 1, "notify: unhealthy: 500 Internal Server Error: 0 workers ready\n", "--url", url)
	registerReady(t, d, sleeper(t))
	check(t, nil, 0, "1 workers ready\n", "--url", url)
	check(t, nil, 0, "1 workers ready\n", "--url", url, "--timeout", "10s")

	if code, out := notify(t, "--socket", d.socket, "--drain"); code != 0 {
		t.Fatalf("notify --drain = %d %q", code, out)
	}
	check(t, nil, 1, "notify: unhealthy: 500 Internal Server Error: 1 workers ready, draining\n", "--url", url)
	if code, out := notify(t, "--socket", d.socket, "--undrain"); code != 0 {
		t.Fatalf("notify --undrain = %d %q", code, out)
	}

	t.Run("NOTIFYD_BIND gives the address", func(t *testing.T) {
		check(t, []string{"NOTIFYD_BIND=" + d.addr}, 0, "1 workers ready\n")
	})

	t.Run("NOTIFYD_BIND on every interface is asked on loopback", func(t *testing.T) {
		port := strconv.Itoa(freePort(t))
		startNotifyd(t, shortDir(t), "--require", "0", "--bind", "0.0.0.0:"+port)
		check(t, []string{"NOTIFYD_BIND=0.0.0.0:" + port}, 0, "0 workers ready\n")
		check(t, []string{"NOTIFYD_BIND=:" + port}, 0, "0 workers ready\n")
	})

	t.Run("nothing listening", func(t *testing.T) {
		port := strconv.Itoa(freePort(t))
		down := "http://127.0.0.1:" + port + "/"
		want := fmt.Sprintf("notify: check %s: Get %q: dial tcp 127.0.0.1:%s: connect: connection refused\n", down, down, port)
		check(t, nil, 1, want, "--url", down)
		check(t, []string{"NOTIFYD_BIND=127.0.0.1:" + port}, 1, want)
	})

	t.Run("usage errors", func(t *testing.T) {
		check(t, nil, 2, "notify: notify check takes no arguments, got \"now\"\n", "--url", url, "now")
		check(t, nil, 2, "notify: --timeout 0s: must be a positive duration such as 5s\n", "--url", url, "--timeout", "0")
	})
}

// notify check prints the health answer itself, and HEAD gets its length.
func TestOperatorNotifyCheckMatchesHealth(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--require", "2")
	registerReady(t, d, sleeper(t), sleeper(t), sleeper(t))
	h := d.health(t)
	code, out := notifyEnv(t, nil, "check", "--url", "http://"+d.addr+"/")
	if h.code != 200 || code != 0 || out != h.body || out != "3 workers ready\n" {
		t.Fatalf("health %d %q, notify check %d %q; want 200 and exit 0 with the same \"3 workers ready\\n\"", h.code, h.body, code, out)
	}
	resp, err := http.Head("http://" + d.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(h.body)) {
		t.Fatalf("HEAD / = %d, body %q, length %d; want 200, no body, length %d", resp.StatusCode, b, resp.ContentLength, len(h.body))
	}
}

// TestOperatorQueueLengthNote starts notifyd on this machine: it names the
// notify socket's queue length at start when the length is below the 512
// systemd sets, and says nothing about it otherwise.
func TestOperatorQueueLengthNote(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	d := startNotifyd(t, shortDir(t))
	noted := strings.Contains(d.log.String(), "net.unix.max_dgram_qlen="+strconv.Itoa(n)+" ")
	if want := n < 512; noted != want {
		t.Fatalf("max_dgram_qlen is %d; noted at start: %v, want %v:\n%s", n, noted, want, d.log.String())
	}
}

// TestOperatorMetricsNamedInREADME scrapes a notifyd that watches a listen
// queue holding exactly three connections nobody accepted, and checks the
// listen-queue metrics, every metric the README names, and promtool.
func TestOperatorMetricsNamedInREADME(t *testing.T) {
	promtool := need(t, "promtool")
	const backlog, waiting = 5, 3
	app := proctest.ListenTCP(t, netip.MustParseAddr("127.0.0.1"), backlog, false).String()
	for range waiting {
		c, err := net.DialTimeout("tcp", app, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--listen-queue", app, "--listen-queue", "127.0.0.1:1")
	registerReady(t, d, sleeper(t))

	length := fmt.Sprintf(`notifyd_listen_queue_length{addr=%q} %d`, app, waiting)
	var body string
	waitFor(t, length, func() bool {
		_, body = httpGet(t, "http://"+d.addr+"/metrics")
		return slices.Contains(strings.Split(body, "\n"), length)
	})
	wantMetricLines(t, body,
		fmt.Sprintf(`notifyd_listen_queue_limit{addr=%q} %d`, app, backlog),
		fmt.Sprintf(`notifyd_listen_queue_listening{addr=%q} 1`, app),
		`notifyd_listen_queue_listening{addr="127.0.0.1:1"} 0`,
		`notifyd_state_file_errors_total 0`,
	)
	promtoolCheck(t, promtool, body)

	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	named := regexp.MustCompile("`(notifyd_[a-z_]+)").FindAllStringSubmatch(string(readme), -1)
	if len(named) == 0 {
		t.Fatal("README.md names no notifyd_ metric")
	}
	// Names of the Python side are not metrics: the module, and the
	// settings it reads from gunicorn's config, quoted in its source.
	python := map[string]bool{"notifyd_gunicorn": true}
	sources, _ := filepath.Glob(filepath.Join(repoRoot, "notifyd_gunicorn", "*.py"))
	for _, path := range sources {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`'(notifyd_[a-z_]+)'`).FindAllStringSubmatch(string(src), -1) {
			python[m[1]] = true
		}
	}
	for _, m := range named {
		if python[m[1]] {
			continue
		}
		if !strings.Contains(body, "\n# TYPE "+m[1]+" ") {
			t.Errorf("README.md names %s, which /metrics lacks", m[1])
		}
	}
}
