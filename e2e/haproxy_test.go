package e2e

import (
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// HAProxy 2.6's server states as "show servers state" prints them
// (srv_op_state and srv_admin_state, see src/server.h).
const (
	opStopped = "0" // SRV_ST_STOPPED: DOWN
	opRunning = "2" // SRV_ST_RUNNING: UP, or DRAIN when an admin flag says so

	adminNone        = "0"
	adminForcedDrain = "8" // SRV_ADMF_FDRAIN: set by an agent's "drain"
)

// agentAddr is the agent-check address of a notifyd run with --agent-bind.
func (d *daemon) agentAddr(t *testing.T) string {
	t.Helper()
	if d.agent == "" {
		t.Fatalf("notifyd's address file names no agent address:\n%s", d.log.String())
	}
	return d.agent
}

// agentReply is the one line notifyd's agent answers a fresh connection.
func agentReply(t *testing.T, addr string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial agent %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read agent %s: %v", addr, err)
	}
	return string(b)
}

// haproxy is a running HAProxy in the foreground with an admin socket.
type haproxy struct {
	cmd   *exec.Cmd
	admin string // runtime API socket
	log   *syncBuffer
	done  chan struct{}
	err   error
}

// startHaproxy writes a configuration of a global section with the admin
// socket, short default timeouts and body, runs HAProxy on it and waits
// until its runtime API answers. The process is killed at the end of the
// test.
func startHaproxy(t *testing.T, body string) *haproxy {
	t.Helper()
	path := need(t, "haproxy")
	dir := shortDir(t)
	h := &haproxy{admin: filepath.Join(dir, "admin.sock"), log: &syncBuffer{}, done: make(chan struct{})}
	cfg := fmt.Sprintf(`global
    stats socket %s level admin

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 1s

%s`, h.admin, body)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command(path, "-f", cfgPath, "-db")
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.err = h.cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		<-h.done
		if t.Failed() {
			t.Logf("haproxy configuration:\n%s\nhaproxy log:\n%s", cfg, h.log.String())
		}
	})
	waitFor(t, "haproxy's runtime API", func() bool {
		select {
		case <-h.done:
			t.Fatalf("haproxy exited at start: %v\n%s", h.err, h.log.String())
		default:
		}
		_, err := h.tryCommand("show info")
		return err == nil
	})
	return h
}

// tryCommand sends one command to the runtime API and returns its whole
// answer: without "prompt", HAProxy closes the connection after answering.
func (h *haproxy) tryCommand(cmd string) (string, error) {
	conn, err := net.DialTimeout("unix", h.admin, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

func (h *haproxy) command(t *testing.T, cmd string) string {
	t.Helper()
	out, err := h.tryCommand(cmd)
	if err != nil {
		t.Fatalf("haproxy runtime API %q: %v", cmd, err)
	}
	return out
}

// server returns the columns of "show servers state <backend>" and of
// "show stat" for one server, by column name. The two share no column name.
func (h *haproxy) server(t *testing.T, backend, name string) map[string]string {
	t.Helper()
	cols := map[string]string{}

	// "show servers state": a version line, a "# name name ..." header,
	// then one space-separated row per server.
	state := h.command(t, "show servers state "+backend)
	var header []string
	found := false
	for line := range strings.Lines(state) {
		fields := strings.Fields(line)
		switch {
		case len(fields) > 1 && fields[0] == "#":
			header = fields[1:]
		case header != nil && len(fields) == len(header):
			row := map[string]string{}
			for i, f := range fields {
				row[header[i]] = f
			}
			if row["be_name"] == backend && row["srv_name"] == name {
				found = true
				for k, v := range row {
					cols[k] = v
				}
			}
		}
	}
	if !found {
		t.Fatalf("show servers state %s has no server %s:\n%s", backend, name, state)
	}

	// "show stat": CSV whose header line starts with "# ".
	stat := h.command(t, "show stat")
	records, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(stat, "# "))).ReadAll()
	if err != nil || len(records) == 0 {
		t.Fatalf("show stat is not CSV (%v):\n%s", err, stat)
	}
	found = false
	for _, rec := range records[1:] {
		if len(rec) == len(records[0]) && rec[0] == backend && rec[1] == name {
			found = true
			for i, v := range rec {
				cols[records[0][i]] = v
			}
		}
	}
	if !found {
		t.Fatalf("show stat has no server %s/%s:\n%s", backend, name, stat)
	}
	return cols
}

// waitServer waits until every column in want has its value for the server,
// and fails with the columns as last seen if that never happens.
func (h *haproxy) waitServer(t *testing.T, backend, name, what string, want map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var last map[string]string
	deadline := time.Now().Add(20 * time.Second)
	for {
		last = h.server(t, backend, name)
		ok := true
		for _, k := range keys {
			if last[k] != want[k] {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var got, exp strings.Builder
			for _, k := range keys {
				fmt.Fprintf(&got, " %s=%q", k, last[k])
				fmt.Fprintf(&exp, " %s=%q", k, want[k])
			}
			t.Fatalf("%s: haproxy server %s/%s never reached\n  want%s\n  last%s", what, backend, name, exp.String(), got.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func wantAgent(t *testing.T, addr, want string) {
	t.Helper()
	if got := agentReply(t, addr); got != want {
		t.Fatalf("agent reply %q, want %q", got, want)
	}
}

func mustNotify(t *testing.T, args ...string) {
	t.Helper()
	if code, out := notify(t, args...); code != 0 {
		t.Fatalf("notify %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
}

// TestHaproxyAgentCheckFollowsReadyCapacity runs HAProxy's agent-check
// against notifyd's agent: the server's weight follows the share of
// --expect workers that are ready, it is DOWN below --require and DRAIN
// while notifyd is drained.
func TestHaproxyAgentCheckFollowsReadyCapacity(t *testing.T) {
	need(t, "haproxy")
	d := startNotifyd(t, shortDir(t), "--require", "2", "--expect", "4", "--agent-bind", "127.0.0.1:0")
	agent := d.agentAddr(t)
	_, agentPort, err := net.SplitHostPort(agent)
	if err != nil {
		t.Fatal(err)
	}
	// The application the backend balances; HAProxy's own health check
	// connects to it, the agent-check asks notifyd.
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "app\n")
	}))
	t.Cleanup(app.Close)
	appAddr := strings.TrimPrefix(app.URL, "http://")

	h := startHaproxy(t, fmt.Sprintf(`backend app
    server web1 %s check inter 100ms weight 100 agent-check agent-addr 127.0.0.1 agent-port %s agent-inter 100ms
`, appAddr, agentPort))

	wantAgent(t, agent, "ready down #0/2 workers ready\n")
	h.waitServer(t, "app", "web1", "0 workers ready", map[string]string{
		"srv_op_state":    opStopped,
		"srv_admin_state": adminNone,
		"status":          "DOWN (agent)",
		"check_status":    "L4OK",
		"agent_status":    "L7STS",
		"last_agt":        "via agent : down (0/2 workers ready)",
	})

	var workers []*exec.Cmd
	register := func(n int) {
		t.Helper()
		for range n {
			w := sleeper(t)
			workers = append(workers, w)
			mustNotify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))
		}
	}

	register(2)
	wantHealth(t, d, 200, "2 workers ready\n")
	wantAgent(t, agent, "ready up 50%\n")
	h.waitServer(t, "app", "web1", "2 of 4 workers ready", map[string]string{
		"srv_op_state":    opRunning,
		"srv_admin_state": adminNone,
		"srv_iweight":     "100",
		"srv_uweight":     "50",
		"status":          "UP",
		"weight":          "50",
		"agent_status":    "L7OK",
		"last_agt":        "via agent : up",
	})

	register(2)
	wantHealth(t, d, 200, "4 workers ready\n")
	wantAgent(t, agent, "ready up 100%\n")
	h.waitServer(t, "app", "web1", "4 of 4 workers ready", map[string]string{
		"srv_op_state":    opRunning,
		"srv_admin_state": adminNone,
		"srv_iweight":     "100",
		"srv_uweight":     "100",
		"status":          "UP",
		"weight":          "100",
	})

	mustNotify(t, "--socket", d.socket, "--drain")
	wantHealth(t, d, 500, "4 workers ready, draining\n")
	wantAgent(t, agent, "drain\n")
	h.waitServer(t, "app", "web1", "notify --drain", map[string]string{
		"srv_op_state":    opRunning,
		"srv_admin_state": adminForcedDrain,
		"srv_uweight":     "100",
		"status":          "DRAIN (agent)",
	})

	mustNotify(t, "--socket", d.socket, "--undrain")
	wantHealth(t, d, 200, "4 workers ready\n")
	wantAgent(t, agent, "ready up 100%\n")
	h.waitServer(t, "app", "web1", "notify --undrain", map[string]string{
		"srv_op_state":    opRunning,
		"srv_admin_state": adminNone,
		"srv_uweight":     "100",
		"status":          "UP",
		"weight":          "100",
	})

	// A worker that dies takes its share of the weight with it.
	workers[0].Process.Kill()
	workers[0].Wait()
	waitHealth(t, d, 200, "3 workers ready\n")
	wantAgent(t, agent, "ready up 75%\n")
	h.waitServer(t, "app", "web1", "a worker killed, 3 of 4 ready", map[string]string{
		"srv_op_state":    opRunning,
		"srv_admin_state": adminNone,
		"srv_uweight":     "75",
		"status":          "UP",
		"weight":          "75",
	})

	for _, w := range workers[1:3] {
		w.Process.Kill()
		w.Wait()
	}
	waitHealth(t, d, 500, "1 workers ready\n")
	wantAgent(t, agent, "ready down #1/2 workers ready\n")
	h.waitServer(t, "app", "web1", "1 of 2 required workers ready", map[string]string{
		"srv_op_state":    opStopped,
		"srv_admin_state": adminNone,
		"status":          "DOWN (agent)",
		"last_agt":        "via agent : down (1/2 workers ready)",
	})
}

// TestHaproxyHttpchkAgainstHealthPort points HAProxy's "option httpchk"
// (OPTIONS / in HAProxy 2.6) at notifyd's HTTP port: the server is DOWN
// until --require workers are ready, and DOWN again while drained.
func TestHaproxyHttpchkAgainstHealthPort(t *testing.T) {
	need(t, "haproxy")
	d := startNotifyd(t, shortDir(t), "--require", "2")
	h := startHaproxy(t, fmt.Sprintf(`backend app
    option httpchk
    server web1 %s check inter 100ms
`, d.addr))

	h.waitServer(t, "app", "web1", "0 workers ready", map[string]string{
		"srv_op_state": opStopped,
		"status":       "DOWN",
		"check_status": "L7STS",
		"check_code":   "500",
		"last_chk":     "Internal Server Error",
	})

	a, b := sleeper(t), sleeper(t)
	mustNotify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(a.Process.Pid))
	wantHealth(t, d, 500, "1 workers ready\n")
	mustNotify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(b.Process.Pid))
	wantHealth(t, d, 200, "2 workers ready\n")
	h.waitServer(t, "app", "web1", "2 of 2 required workers ready", map[string]string{
		"srv_op_state": opRunning,
		"status":       "UP",
		"check_status": "L7OK",
		"check_code":   "200",
	})

	mustNotify(t, "--socket", d.socket, "--drain")
	h.waitServer(t, "app", "web1", "notify --drain", map[string]string{
		"srv_op_state": opStopped,
		"status":       "DOWN",
		"check_status": "L7STS",
		"check_code":   "500",
	})

	mustNotify(t, "--socket", d.socket, "--undrain")
	h.waitServer(t, "app", "web1", "notify --undrain", map[string]string{
		"srv_op_state": opRunning,
		"status":       "UP",
		"check_status": "L7OK",
		"check_code":   "200",
	})
}

// TestHaproxyDeployConfigIsValid checks the example configuration exactly as
// an operator would before loading it.
func TestHaproxyDeployConfigIsValid(t *testing.T) {
	path := need(t, "haproxy")
	cmd := exec.Command(path, "-c", "-f", "deploy/haproxy/haproxy.cfg")
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f deploy/haproxy/haproxy.cfg: %v\n%s", err, out)
	}
	// No warning either: an example should not teach one.
	if string(out) != "Configuration file is valid\n" {
		t.Fatalf("haproxy -c -f deploy/haproxy/haproxy.cfg printed %q, want %q", out, "Configuration file is valid\n")
	}
}
