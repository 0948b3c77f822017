package httpapi_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"

	"github.com/notifyd/notifyd/internal/proctest"
)

// Shared with the other packages' tests: internal/proctest.
var (
	eventually = proctest.Eventually
	sleeper    = proctest.Sleeper
)

// waitLimit bounds how long a test polls for an asynchronous effect:
// proctest.Patience.
const waitLimit = proctest.Patience

// root is the sender of every message in these tests: the test process, as
// root, which may speak for any pid.
func root() protocol.Credentials {
	return protocol.Credentials{PID: os.Getpid(), UID: 0, GID: 0}
}

// newRegistry returns a registry over a fresh state directory that sees
// exits through pidfds. Its exit watcher runs until the test ends.
func newRegistry(t *testing.T) *registry.Registry {
	t.Helper()
	reg, err := registry.New(registry.Config{
		Dir:       t.TempDir(),
		Filename:  ".gunicorn.worker.{}",
		Detection: registry.Pidfd,
	})
	if err != nil {
		t.Fatalf("registry.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("registry Run: %v", err)
		}
		reg.Close()
	})
	return reg
}

// send applies m to reg as root and fails the test if it is rejected.
func send(t *testing.T, reg *registry.Registry, m protocol.Message) {
	t.Helper()
	if err := reg.HandleMessage(m, root()); err != nil {
		t.Fatalf("HandleMessage(%+v): %v", m, err)
	}
}

// readyWorkers starts n sleepers and registers each one as ready.
func readyWorkers(t *testing.T, reg *registry.Registry, n int) []*exec.Cmd {
	t.Helper()
	var cmds []*exec.Cmd
	for range n {
		c := sleeper(t)
		send(t, reg, protocol.Message{Lifecycle: protocol.Ready, PID: c.Process.Pid})
		cmds = append(cmds, c)
	}
	if got := reg.Summary().Ready; got != n {
		t.Fatalf("registry has %d ready workers, want %d", got, n)
	}
	return cmds
}

// serve runs the full handler on a test server closed at the end of the
// test, and returns its base URL.
func serve(t *testing.T, cfg httpapi.Config) string {
	t.Helper()
	srv := httptest.NewServer(httpapi.NewHandler(cfg))
	t.Cleanup(srv.Close)
	return srv.URL
}

// answer is one HTTP response, read whole.
type answer struct {
	code   int
	header http.Header
	body   string
}

func do(t *testing.T, method, url string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return answer{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// startTime is field 22 of /proc/<pid>/stat, counted after the last ')'.
func startTime(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	n, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		t.Fatalf("start time of %d: %v", pid, err)
	}
	return n
}

// expecting sets the workers reg's instance is configured to run, as
// --expect does, and returns reg.
func expecting(reg *registry.Registry, n int) *registry.Registry {
	reg.SetExpected(n)
	return reg
}
