package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// background is a notify command running while the test goes on.
type background struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	code int
}

// startNotify starts notify with args and returns at once.
func startNotify(t *testing.T, args ...string) *background {
	t.Helper()
	b := &background{cmd: exec.Command(filepath.Join(bin, "notify"), args...), out: &syncBuffer{}, done: make(chan struct{})}
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := b.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			b.code = ee.ExitCode()
		} else if err != nil {
			b.code = -1
		}
		close(b.done)
	}()
	t.Cleanup(func() { b.cmd.Process.Kill(); <-b.done })
	return b
}

// running fails the test if b has exited.
func (b *background) running(t *testing.T, why string) {
	t.Helper()
	select {
	case <-b.done:
		t.Fatalf("notify exited %d with %q %s", b.code, b.out.String(), why)
	default:
	}
}

// result waits for b to exit and returns its exit code and output.
func (b *background) result(t *testing.T) (int, string) {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("notify %v has not exited; output so far %q", b.cmd.Args[1:], b.out.String())
	}
	return b.code, b.out.String()
}

// wantNotify runs notify and checks its exit code and whole output.
func wantNotify(t *testing.T, wantCode int, wantOut string, args ...string) {
	t.Helper()
	if code, out := notify(t, args...); code != wantCode || out != wantOut {
		t.Fatalf("notify %q = %d %q, want %d %q", args, code, out, wantCode, wantOut)
	}
}

// fields splits output into lines of whitespace-separated fields, so that a
// table can be compared without its column widths.
func fields(out string) [][]string {
	var lines [][]string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		lines = append(lines, strings.Fields(l))
	}
	return lines
}

// wantAligned checks that every row of the table at the top of out starts
// its last column where the header's STATUS does.
func wantAligned(t *testing.T, out string, rows int) {
	t.Helper()
	lines := strings.Split(out, "\n")
	col := strings.Index(lines[0], "STATUS")
	if col < 0 {
		t.Fatalf("no STATUS column in %q", lines[0])
	}
	for _, l := range lines[1 : 1+rows] {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Fatalf("row %q does not start its status at column %d:\n%s", l, col, out)
		}
	}
}

var readyFor = regexp.MustCompile(`^(\d+s|\d+m\d\ds)$`)

func TestNotifyStatusTable(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "2", "--expect", "3")
	u := "--url=http://" + d.addr + "/"

	wantNotify(t, 0, "no workers registered\nunhealthy: 0 ready, 2 required, 3 expected, not draining, 0 busy, 0 in flight\n", "status", u)

	a, b := sleeper(t), sleeper(t)
	if a.Process.Pid > b.Process.Pid {
		a, b = b, a
	}
	registerReady(t, d, a)
	wantNotify(t, 0, "", "--socket", d.socket, "--pid", strconv.Itoa(a.Process.Pid), "--status", "serving on :8000")
	wantNotify(t, 0, "", "--socket", d.socket, "--pid", strconv.Itoa(b.Process.Pid), "--status", "loading the model")
	code, out := notify(t, "status", u)
	got := fields(out)
	if code != 0 || len(got) != 4 || strings.Join(got[0], " ") != "PID STATE READY FOR IN FLIGHT REQUESTS STATUS" ||
		strings.Join(got[3], " ") != "unhealthy: 1 ready, 2 required, 3 expected, not draining, 0 busy, 0 in flight" {
		t.Fatalf("notify status = %d %q, want a header, two workers and an unhealthy summary", code, out)
	}
	// The sleepers report no requests: their activity reads 0 and 0.
	if w := got[1]; len(w) != 8 || w[0] != strconv.Itoa(a.Process.Pid) || w[1] != "ready" || !readyFor.MatchString(w[2]) || strings.Join(w[3:], " ") != "0 0 serving on :8000" {
		t.Fatalf("ready worker's line %q, want pid %d, ready, an age, 0, 0 and its status", w, a.Process.Pid)
	}
	if w := got[2]; strings.Join(w, " ") != strconv.Itoa(b.Process.Pid)+" starting - 0 0 loading the model" {
		t.Fatalf("starting worker's line %q, want pid %d, starting, -, 0, 0 and its status", w, b.Process.Pid)
	}
	wantAligned(t, out, 2)
	if strings.ContainsAny(out, "\x1b\r") {
		t.Fatalf("notify status into a pipe wrote escape sequences: %q", out)
	}

	registerReady(t, d, b)
	code, out = notify(t, "status", u)
	if lines := fields(out); code != 0 || len(lines) != 4 || lines[2][1] != "ready" ||
		strings.Join(lines[3], " ") != "healthy: 2 ready, 2 required, 3 expected, not draining, 0 busy, 0 in flight" {
		t.Fatalf("notify status with both ready = %d %q", code, out)
	}
	wantNotify(t, 0, "", "--socket", d.socket, "--drain")
	code, out = notify(t, "status", u)
	if lines := fields(out); code != 0 || len(lines) != 4 ||
		strings.Join(lines[3], " ") != "unhealthy: 2 ready, 2 required, 3 expected, draining, 0 busy, 0 in flight" {
		t.Fatalf("notify status while draining = %d %q", code, out)
	}

	// --json is /status as notifyd answers it.
	code, out = notify(t, "status", "--json", u)
	if _, body := httpGet(t, "http://"+d.addr+"/status"); code != 0 || out != body {
		t.Fatalf("notify status --json = %d %q, want 0 and GET /status's body %q", code, out, body)
	}

	t.Run("NOTIFYD_BIND gives the address", func(t *testing.T) {
		code, out := notifyEnv(t, []string{"NOTIFYD_BIND=" + d.addr}, "status")
		if lines := fields(out); code != 0 || len(lines) != 4 || lines[3][0] != "unhealthy:" {
			t.Fatalf("notify status with NOTIFYD_BIND = %d %q", code, out)
		}
	})
	t.Run("a URL with a path asks /status beside it", func(t *testing.T) {
		for _, path := range []string{"status", "healthz"} {
			code, out := notify(t, "status", "--json", "--url", "http://"+d.addr+"/"+path)
			if _, body := httpGet(t, "http://"+d.addr+"/status"); code != 0 || out != body {
				t.Fatalf("notify status --json --url .../%s = %d %q, want /status", path, code, out)
			}
		}
	})
}

// TestNotifyStatusActivity sends a worker's activity. A notifyd that keeps
// activity reports it in /status and notify status shows it in two columns;
// one that does not, ignores the keys, and the columns are not shown.
func TestNotifyStatusActivity(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "1")
	w := sleeper(t)
	wantNotify(t, 0, "", "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid),
		"--status", "busy", "X_NOTIFYD_IN_FLIGHT=1", "X_NOTIFYD_REQUESTS=7", "X_NOTIFYD_BUSY_USEC=2500000")
	_, inFlight := statusDoc(t, d)["workers"].([]any)[0].(map[string]any)["in_flight"]
	code, out := notify(t, "status", "--url", "http://"+d.addr+"/")
	lines := fields(out)
	if code != 0 || len(lines) != 3 {
		t.Fatalf("notify status = %d %q", code, out)
	}
	if inFlight {
		if h := strings.Join(lines[0], " "); h != "PID STATE READY FOR IN FLIGHT REQUESTS STATUS" {
			t.Fatalf("notifyd reports activity; header %q has no IN FLIGHT and REQUESTS", h)
		}
		if row := lines[1]; len(row) != 6 || row[3] != "1" || row[4] != "7" || row[5] != "busy" {
			t.Fatalf("worker's line %q, want in flight 1 and requests 7", row)
		}
		if !strings.Contains(out, ", 1 busy, 1 in flight\n") {
			t.Fatalf("summary does not say 1 busy, 1 in flight:\n%s", out)
		}
	} else {
		if h := strings.Join(lines[0], " "); h != "PID STATE READY FOR STATUS" {
			t.Fatalf("notifyd reports no activity; header %q should not name it", h)
		}
		if strings.Contains(out, "busy,") || strings.Contains(out, "in flight") {
			t.Fatalf("notifyd reports no activity, yet the summary names it:\n%s", out)
		}
	}
	wantAligned(t, out, 1)
}

// fakeStatus serves a /status document the test writes, and counts the
// requests. It stands in for what notifyd does not do: report activity
// before it can, or answer garbage.
type fakeStatus struct {
	srv      *httptest.Server
	requests atomic.Int64
}

func serveFake(t *testing.T, code int, contentType, body string) *fakeStatus {
	t.Helper()
	f := &fakeStatus{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(code)
		io.WriteString(w, body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func TestNotifyStatusShowsActivityAndQueues(t *testing.T) {
	readyAt := time.Now().Add(-(3*time.Minute + 7*time.Second)).UTC().Format(time.RFC3339Nano)
	f := serveFake(t, 200, "application/json", `{"ready": 2, "required": 2, "expected": 3, "healthy": true, "draining": false,
	  "in_flight": 3, "busy_workers": 1,
	  "workers": [
	    {"pid": 101, "state": "ready", "ready_at": "`+readyAt+`", "status": "serving\u001b[2J", "in_flight": 3, "requests": 12345, "busy_seconds": 1.5},
	    {"pid": 102, "state": "ready", "ready_at": "`+readyAt+`", "status": "", "in_flight": 0, "requests": 9, "busy_seconds": 0},
	    {"pid": 103, "state": "hung", "ready_at": null, "status": "stuck"}
	  ],
	  "listen_queues": [
	    {"addr": "127.0.0.1:8000", "listening": true, "queued": 17, "limit": 64, "oldest_seconds": 2.06, "peak": 20, "drops": 5},
	    {"addr": "unix:/run/b.sock", "listening": true, "queued": 1, "limit": 8, "oldest_seconds": 0.3, "peak": 4, "drops": 0},
	    {"addr": "[::1]:8000", "listening": true, "queued": 2, "limit": 0},
	    {"addr": "unix:/run/app.sock", "listening": false, "queued": 0, "limit": 0}
	  ]}`)
	code, out := notify(t, "status", "--url", f.srv.URL)
	want := "" +
		"PID  STATE  READY FOR  IN FLIGHT  REQUESTS  STATUS\n" +
		"101  ready  3m07s      3          12345     serving?[2J\n" +
		"102  ready  3m07s      0          9\n" +
		"103  hung   -          -          -         stuck\n" +
		"healthy: 2 ready, 2 required, 3 expected, not draining, 1 busy, 3 in flight\n" +
		"listen queue 127.0.0.1:8000: 17 of 64 queued, oldest 2.1s, peak 20 in 60s, 5 dropped\n" +
		"listen queue unix:/run/b.sock: 1 of 8 queued, oldest 0.3s, peak 4 in 60s\n" +
		"listen queue [::1]:8000: 2 queued, limit unknown\n" +
		"listen queue unix:/run/app.sock: nothing listens there\n"
	// The age may tick over a second while the test runs.
	if code != 0 || strings.ReplaceAll(out, "3m08s", "3m07s") != want {
		t.Fatalf("notify status = %d\n%s\nwant 0\n%s", code, out, want)
	}
}

// onTerminal runs notify with a pseudo-terminal of the given width as its
// standard output, and returns what it wrote there.
func onTerminal(t *testing.T, cols uint16, env []string, args ...string) string {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("name the pseudo-terminal: %v", err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: cols}); err != nil {
		pts.Close()
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "notify"), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = pts
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	pts.Close()
	if err != nil {
		t.Fatalf("notify %v on a terminal: %v %s", args, err, stderr.String())
	}
	// With every copy of the terminal's end closed, reading ends in EIO.
	out, _ := io.ReadAll(ptmx)
	return strings.ReplaceAll(string(out), "\r\n", "\n")
}

func TestNotifyStatusOnATerminal(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "1")
	w := sleeper(t)
	registerReady(t, d, w)
	long := strings.Repeat("a long status text ", 10)
	wantNotify(t, 0, "", "--socket", d.socket, "--pid", strconv.Itoa(w.Process.Pid), "--status", long)
	u := "--url=http://" + d.addr + "/"

	out := onTerminal(t, 60, nil, "status", u)
	if !strings.Contains(out, " \x1b[32mready\x1b[0m ") || !strings.Contains(out, "\x1b[32mhealthy\x1b[0m: 1 ready") {
		t.Fatalf("notify status on a terminal has no green ready and healthy:\n%q", out)
	}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		plain := regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(l, "")
		if n := len([]rune(plain)); n > 60 {
			t.Fatalf("line of %d columns on a terminal 60 wide: %q", n, plain)
		}
	}
	if !strings.Contains(out, "…\n") {
		t.Fatalf("the long status is not cut with an ellipsis:\n%q", out)
	}

	if out := onTerminal(t, 60, []string{"NO_COLOR=1"}, "status", u); strings.Contains(out, "\x1b") || !strings.Contains(out, "…\n") {
		t.Fatalf("notify status with NO_COLOR on a terminal = %q, want no escapes, still cut to width", out)
	}
	// Into a pipe, the same table is neither coloured nor cut.
	if code, out := notify(t, "status", u); code != 0 || strings.Contains(out, "\x1b") || !strings.Contains(out, strings.TrimSpace(long)+"\n") {
		t.Fatalf("notify status into a pipe = %d %q, want the whole status text and no escapes", code, out)
	}
}

// closedPort is a loopback URL where nothing listens.
func closedPort(t *testing.T) (string, string) {
	t.Helper()
	port := strconv.Itoa(freePort(t))
	return "http://127.0.0.1:" + port + "/", port
}

func TestNotifyStatusErrors(t *testing.T) {
	down, port := closedPort(t)
	refused := fmt.Sprintf(`Get "http://127.0.0.1:%s/status": dial tcp 127.0.0.1:%s: connect: connection refused`, port, port)
	wantNotify(t, 1, "notify: status: "+refused+"\n", "status", "--url", down)

	html := serveFake(t, 200, "text/html", "<html>hello</html>")
	wantNotify(t, 1, "notify: "+html.srv.URL+"/status is not notifyd's /status: invalid character '<' looking for beginning of value\n", "status", "--url", html.srv.URL)
	wantNotify(t, 1, "notify: "+html.srv.URL+"/status is not notifyd's /status: invalid character '<' looking for beginning of value\n", "status", "--json", "--url", html.srv.URL)
	other := serveFake(t, 200, "application/json", `{"status": "ok"}`)
	wantNotify(t, 1, "notify: "+other.srv.URL+"/status is not notifyd's /status: no ready, required, expected, healthy or workers field\n", "status", "--url", other.srv.URL)
	missing := serveFake(t, 404, "text/plain", "404 page not found\n")
	wantNotify(t, 1, "notify: "+missing.srv.URL+"/status answered 404 Not Found: 404 page not found\n", "status", "--url", missing.srv.URL)

	wantNotify(t, 2, "notify: notify status takes no arguments, got \"now\"\n", "status", "now")
	wantNotify(t, 2, "notify: --url \"127.0.0.1:8001\": want notifyd's address as an http:// URL, such as http://127.0.0.1:8001/\n", "status", "--url", "127.0.0.1:8001")
	wantNotify(t, 2, "notify: flag provided but not defined: -wide (see notify status --help)\n", "status", "--wide")
}

func TestNotifyWaitReadyAndTimeout(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "1")
	u := "--url=http://" + d.addr + "/"
	registerReady(t, d, sleeper(t))

	wantNotify(t, 0, "1 workers ready\n", "wait", "--ready", "1", u)
	wantNotify(t, 1, "notify: timed out after 300ms: 1 of 2 workers ready\n", "wait", "--ready", "2", "--timeout", "300ms", u)
	t.Run("a timeout shorter than one poll", func(t *testing.T) {
		wantNotify(t, 1, "notify: timed out after 10ms: 1 of 2 workers ready\n", "wait", "--ready", "2", "--timeout", "10ms", u)
		// The first answer is always heard out.
		wantNotify(t, 0, "1 workers ready\n", "wait", "--ready", "1", "--timeout", "1ns", u)
	})

	// A wait blocks until the workers come.
	w := startNotify(t, "wait", "--ready", "3", u)
	registerReady(t, d, sleeper(t))
	w.running(t, "with 2 of 3 ready")
	registerReady(t, d, sleeper(t))
	if code, out := w.result(t); code != 0 || out != "3 workers ready\n" {
		t.Fatalf("notify wait --ready 3 = %d %q, want 0 \"3 workers ready\\n\"", code, out)
	}

	t.Run("usage errors", func(t *testing.T) {
		wantNotify(t, 2, "notify: notify wait needs --ready N, the number of workers to wait for\n", "wait", u)
		wantNotify(t, 2, "notify: --ready 0: must be a number of workers, at least 1\n", "wait", "--ready", "0", u)
		wantNotify(t, 2, "notify: invalid value \"two\" for flag -ready: parse error (see notify wait --help)\n", "wait", "--ready", "two", u)
		wantNotify(t, 2, "notify: --timeout 0s: must be a positive duration such as 60s\n", "wait", "--ready", "1", "--timeout", "0", u)
		wantNotify(t, 2, "notify: notify wait takes no arguments, got \"2\"\n", "wait", "--ready", "1", u, "2")
		wantNotify(t, 2, "notify: --url \"ftp://x/\": want notifyd's address as an http:// URL, such as http://127.0.0.1:8001/\n", "wait", "--ready", "1", "--url", "ftp://x/")
	})
}

// countingProxy forwards to notifyd and counts the requests, so that a test
// knows a wait has begun: it asks once it has taken its start time.
func countingProxy(t *testing.T, d *daemon) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	target, err := url.Parse("http://" + d.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestNotifyWaitFresh(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "1")
	old1, old2 := sleeper(t), sleeper(t)
	registerReady(t, d, old1, old2)
	proxy, asked := countingProxy(t, d)

	w := startNotify(t, "wait", "--ready", "2", "--fresh", "--url", proxy.URL)
	waitFor(t, "notify wait to ask /status", func() bool { return asked.Load() > 0 })
	w.running(t, "with two old workers and no fresh one")
	registerReady(t, d, sleeper(t))
	// The answers after the registration have 3 ready, 1 fresh.
	seen := asked.Load()
	waitFor(t, "notify wait to ask again", func() bool { return asked.Load() > seen+1 })
	w.running(t, "with one fresh worker of two")
	// An old worker that reloads and is ready again is fresh: its ready_at
	// is after the wait began.
	wantNotify(t, 0, "", "--socket", d.socket, "--reloading", "--pid", strconv.Itoa(old1.Process.Pid))
	registerReady(t, d, old1)
	if code, out := w.result(t); code != 0 || out != "2 fresh workers ready\n" {
		t.Fatalf("notify wait --ready 2 --fresh = %d %q, want 0 \"2 fresh workers ready\\n\"", code, out)
	}

	// Every worker is old to a wait that begins now.
	wantNotify(t, 1, "notify: timed out after 300ms: 0 of 1 fresh workers ready (3 ready in all)\n",
		"wait", "--ready", "1", "--fresh", "--timeout", "300ms", "--url", proxy.URL)
	wantNotify(t, 0, "3 workers ready\n", "wait", "--ready", "3", "--timeout", "300ms", "--url", proxy.URL)
}

func TestNotifyWaitWhileNotifydIsDown(t *testing.T) {
	down, port := closedPort(t)
	refused := fmt.Sprintf(`Get "http://127.0.0.1:%s/status": dial tcp 127.0.0.1:%s: connect: connection refused`, port, port)
	wantNotify(t, 1, "notify: timed out after 300ms: notifyd never answered: "+refused+"\n", "wait", "--ready", "1", "--timeout", "300ms", "--url", down)

	// A notifyd that starts during the wait, as in a deploy that restarts
	// it too, is asked once it listens.
	w := startNotify(t, "wait", "--ready", "1", "--url", down)
	d := startNotifyd(t, shortDir(t), "--bind", "127.0.0.1:"+port)
	w.running(t, "before a worker is ready")
	registerReady(t, d, sleeper(t))
	if code, out := w.result(t); code != 0 || out != "1 workers ready\n" {
		t.Fatalf("notify wait across notifyd's start = %d %q, want 0 \"1 workers ready\\n\"", code, out)
	}

	// A notifyd that stops answering after it answered is named as such.
	proxy, asked := countingProxy(t, d)
	w = startNotify(t, "wait", "--ready", "2", "--timeout", "2s", "--url", proxy.URL)
	waitFor(t, "notify wait to ask /status", func() bool { return asked.Load() > 0 })
	proxy.Close()
	code, out := w.result(t)
	if want := regexp.MustCompile(`^notify: timed out after 2s: 1 of 2 workers ready when last answered, then: Get "` + regexp.QuoteMeta(proxy.URL) + `/status": dial tcp [^ ]+: connect: connection refused\n$`); code != 1 || !want.MatchString(out) {
		t.Fatalf("notify wait after notifyd went away = %d %q, want 1 and a line matching %s", code, out, want)
	}
}

func TestNotifyWaitGarbage(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		code                    int
		want                    string // after the URL
	}{
		{"plain text", "text/plain", "hello\n", 200, "is not notifyd's /status: invalid character 'h' looking for beginning of value"},
		{"other JSON", "application/json", `[1, 2]`, 200, "is not notifyd's /status: a JSON array, not an object"},
		{"a wrong type", "application/json", `{"ready": "yes"}`, 200, "is not notifyd's /status: a JSON string as ready"},
		{"a worker without a pid", "application/json", `{"ready": 1, "required": 1, "expected": 1, "healthy": true, "workers": [{"state": "ready"}]}`, 200, "is not notifyd's /status: a worker without a pid or state"},
		{"not found", "text/plain", "nope", 404, "answered 404 Not Found: nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := serveFake(t, tt.code, tt.contentType, tt.body)
			// An answer that is not /status ends the wait at once: the URL
			// is wrong, and waiting will not right it. A wait that went on
			// would ask again, ten times a second.
			wantNotify(t, 1, "notify: "+f.srv.URL+"/status "+tt.want+"\n", "wait", "--ready", "1", "--timeout", "60s", "--url", f.srv.URL)
			if n := f.requests.Load(); n != 1 {
				t.Fatalf("notify wait asked %d times, want once", n)
			}
		})
	}

	// A 5xx answer may be notifyd or a proxy restarting: the wait goes on.
	f := serveFake(t, 503, "text/plain", "restarting")
	wantNotify(t, 1, "notify: timed out after 2s: notifyd never answered: "+f.srv.URL+"/status answered 503 Service Unavailable: restarting\n",
		"wait", "--ready", "1", "--timeout", "2s", "--url", f.srv.URL)
	if f.requests.Load() < 2 {
		t.Fatalf("notify wait asked a 503 answer %d times in 2s, want it to ask again", f.requests.Load())
	}
}

// TestNotifyWaitPollsGently counts the requests of a wait that is never met:
// at most 20 a second, and more than one.
func TestNotifyWaitPollsGently(t *testing.T) {
	f := serveFake(t, 200, "application/json", `{"ready": 0, "required": 1, "expected": 1, "healthy": false, "draining": false, "workers": []}`)
	start := time.Now()
	wantNotify(t, 1, "notify: timed out after 2s: 0 of 1 workers ready\n", "wait", "--ready", "1", "--timeout", "2s", "--url", f.srv.URL)
	elapsed := time.Since(start)
	n := f.requests.Load()
	if limit := int64(elapsed.Seconds()*20) + 1; n > limit || n < 2 {
		t.Fatalf("notify wait asked %d times in %s, want 2 to %d", n, elapsed, limit)
	}

	t.Run("a timeout shorter than one poll asks once", func(t *testing.T) {
		f := serveFake(t, 200, "application/json", `{"ready": 0, "required": 1, "expected": 1, "healthy": false, "draining": false, "workers": []}`)
		wantNotify(t, 1, "notify: timed out after 20ms: 0 of 1 workers ready\n", "wait", "--ready", "1", "--timeout", "20ms", "--url", f.srv.URL)
		if n := f.requests.Load(); n != 1 {
			t.Fatalf("notify wait --timeout 20ms asked %d times, want 1", n)
		}
	})
}

// TestNotifyWaitFreshAfterGunicornReload is the deploy script's case: a
// wait that begins before a HUP ends once two new workers are ready, and
// not on the two old ones.
func TestNotifyWaitFreshAfterGunicornReload(t *testing.T) {
	d := startNotifyd(t, shortDir(t), "--require", "2")
	s := startGunicorn(t, d.socket)
	old := waitSettled(t, d, s)
	proxy, asked := countingProxy(t, d)

	w := startNotify(t, "wait", "--ready", "2", "--fresh", "--timeout", "60s", "--url", proxy.URL)
	waitFor(t, "notify wait to ask /status", func() bool { return asked.Load() > 0 })
	w.running(t, "before the reload, with two old workers ready")
	s.cmd.Process.Signal(syscall.SIGHUP)
	if code, out := w.result(t); code != 0 || out != "2 fresh workers ready\n" {
		t.Fatalf("notify wait --fresh across a HUP = %d %q, want 0 \"2 fresh workers ready\\n\"", code, out)
	}
	var fresh []int
	for _, wk := range statusDoc(t, d)["workers"].([]any) {
		wk := wk.(map[string]any)
		pid, _ := wk["pid"].(json.Number).Int64()
		if wk["state"] == "ready" && !slices.Contains(old, int(pid)) {
			fresh = append(fresh, int(pid))
		}
	}
	if len(fresh) < 2 {
		t.Fatalf("notify wait returned with ready workers %v besides the old %v, want two new ones", fresh, old)
	}
}
