package e2e

import (
	"errors"
	"net"
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

	"github.com/notifyd/notifyd/internal/addrfile"
	"github.com/notifyd/notifyd/protocol"
)

// manager stands in for systemd's side of NOTIFY_SOCKET: it records every
// message notifyd sends about itself.
type manager struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func newManager(t *testing.T) *manager {
	t.Helper()
	m := &manager{path: filepath.Join(shortDir(t), "systemd.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: m.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			m.mu.Lock()
			m.msgs = append(m.msgs, string(buf[:n]))
			m.mu.Unlock()
		}
	}()
	return m
}

func (m *manager) messages() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.msgs)
}

func (m *manager) waitFor(t *testing.T, msg string) {
	t.Helper()
	waitFor(t, "systemd to receive "+strconv.Quote(msg), func() bool { return slices.Contains(m.messages(), msg) })
}

func TestSystemdTypeNotifyMessages(t *testing.T) {
	tests := []struct {
		gate      string
		first     string // what notifyd says once it is up, before any worker
		withReady string // what it says once one worker is ready
	}{
		{"listening", "READY=1\nSTATUS=0/1 workers ready", "STATUS=1/1 workers ready"},
		{"workers", "STATUS=0/1 workers ready", "READY=1\nSTATUS=1/1 workers ready"},
	}
	for _, tt := range tests {
		t.Run(tt.gate, func(t *testing.T) {
			m := newManager(t)
			dir := shortDir(t)
			d := launch(t, dir, []string{"NOTIFY_SOCKET=" + m.path}, nil, "--systemd-ready", tt.gate)
			d.waitStarted(t)
			m.waitFor(t, tt.first)

			w := sleeper(t)
			notify(t, "--socket", d.socket, "--ready", "--pid", strconv.Itoa(w.Process.Pid))
			m.waitFor(t, tt.withReady)
			if err := d.stop(t, syscall.SIGTERM); err != nil {
				t.Fatalf("notifyd exit: %v", err)
			}
			m.waitFor(t, "STOPPING=1")

			got := m.messages()
			if got[0] != tt.first {
				t.Fatalf("first message %q, want %q", got[0], tt.first)
			}
			if got[len(got)-1] != "STOPPING=1" {
				t.Fatalf("last message %q, want STOPPING=1", got[len(got)-1])
			}
			readies := 0
			for _, msg := range got {
				readies += strings.Count(msg, "READY=1")
				if strings.Contains(msg, "WATCHDOG=1") {
					t.Fatalf("watchdog ping %q without WATCHDOG_USEC", msg)
				}
			}
			if readies != 1 {
				t.Fatalf("READY=1 sent %d times in %q, want once", readies, got)
			}
		})
	}
}

func TestSystemdWatchdogPings(t *testing.T) {
	m := newManager(t)
	dir := shortDir(t)
	d := launch(t, dir, []string{"NOTIFY_SOCKET=" + m.path, "WATCHDOG_USEC=200000"}, nil)
	d.waitStarted(t)
	waitFor(t, "two watchdog pings", func() bool {
		n := 0
		for _, msg := range m.messages() {
			if msg == "WATCHDOG=1" {
				n++
			}
		}
		return n >= 2
	})
}

func TestRefusesSystemdsOwnSocket(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "notify.sock")
	cmd := exec.Command(filepath.Join(bin, "notifyd"), "--socket", sock, "--dir", dir, "--bind", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2; output %q", err, out)
	}
	if !strings.Contains(string(out), "is $NOTIFY_SOCKET") || strings.Count(string(out), "\n") != 1 {
		t.Fatalf("output %q, want one line saying the socket is $NOTIFY_SOCKET", out)
	}
}

func TestSocketActivationAppliesQueuedDatagrams(t *testing.T) {
	activate := need(t, "systemd-socket-activate")
	dir := shortDir(t)
	sock := filepath.Join(dir, "notify.sock")
	// systemd-socket-activate holds the socket and starts notifyd only when
	// the first datagram arrives: the READY=1 below is sent before notifyd
	// runs, and waits in the kernel's queue.
	d := launch(t, dir, nil, []string{activate, "--datagram", "--listen=" + sock, "--fdname=notify"})
	waitFor(t, "the activation socket", func() bool { _, err := os.Stat(sock); return err == nil })
	if strings.Contains(d.log.String(), "notifyd started") {
		t.Fatal("notifyd started before any datagram was sent")
	}
	w := sleeper(t)
	if code, out := notify(t, "--socket", sock, "--ready", "--pid", strconv.Itoa(w.Process.Pid)); code != 0 {
		t.Fatalf("notify exit %d: %s", code, out)
	}
	d.waitStarted(t)
	wantHealth(t, d, 200, "1 workers ready\n")
	if !strings.Contains(d.log.String(), "using the notify socket passed by systemd") {
		t.Fatal("notifyd did not use the inherited socket")
	}
	d.stop(t, syscall.SIGTERM)
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("notifyd removed the inherited socket's file: %v", err)
	}
}

// TestSocketActivationBothSockets passes the datagram socket and the HTTP
// listener as systemd does: descriptors from 3 on, LISTEN_FDS, LISTEN_PID
// and, when named, LISTEN_FDNAMES.
func TestSocketActivationBothSockets(t *testing.T) {
	for _, named := range []bool{true, false} {
		t.Run("named="+strconv.FormatBool(named), func(t *testing.T) {
			dir := shortDir(t)
			sock := filepath.Join(dir, "activated.sock")
			dgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer dgram.Close()
			tcp, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer tcp.Close()
			httpFile, _ := tcp.(*net.TCPListener).File()
			dgramFile, _ := dgram.File()

			// Queued before notifyd exists, with the sender's credentials.
			w := sleeper(t)
			c, err := protocol.Dial(sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Send([]byte("READY=1\nPID="+strconv.Itoa(w.Process.Pid)), 5*time.Second); err != nil {
				t.Fatal(err)
			}

			env := []string{"LISTEN_FDS=2"}
			if named {
				env = append(env, "LISTEN_FDNAMES=http:notify")
			}
			d := &daemon{dir: dir, log: &syncBuffer{}, done: make(chan struct{})}
			args := []string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`,
				filepath.Join(bin, "notifyd"), "--socket", filepath.Join(dir, "unused.sock"), "--dir", dir}
			d.cmd = exec.Command("sh", args...)
			d.cmd.Env = append(os.Environ(), env...)
			d.cmd.ExtraFiles = []*os.File{httpFile, dgramFile}
			if !named {
				d.cmd.ExtraFiles = []*os.File{dgramFile, httpFile}
			}
			d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
			d.addrFile = filepath.Join(t.TempDir(), "address.json")
			if err := addrfile.Start(d.cmd, d.addrFile); err != nil {
				t.Fatal(err)
			}
			go func() { d.err = d.cmd.Wait(); close(d.done) }()
			t.Cleanup(func() { d.cmd.Process.Kill(); <-d.done })
			d.waitStarted(t)
			if d.addr != tcp.Addr().String() {
				t.Fatalf("notifyd serves HTTP on %s, want the passed listener %s", d.addr, tcp.Addr())
			}
			// The queued datagram is read once the socket loop runs.
			waitHealth(t, d, 200, "1 workers ready\n")
			if _, err := os.Stat(filepath.Join(dir, "unused.sock")); err == nil {
				t.Fatal("notifyd bound --socket although a socket was passed")
			}
		})
	}
}

func TestSystemdUnitsVerify(t *testing.T) {
	analyze := need(t, "systemd-analyze")
	need(t, "gunicorn") // myapp.service runs it
	dir := t.TempDir()
	units, err := filepath.Glob(filepath.Join(repoRoot, "deploy/systemd/*"))
	if err != nil || len(units) < 4 {
		t.Fatalf("units %v: %v", units, err)
	}
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// The units name the installed path; verify checks that it exists.
		b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/notifyd", filepath.Join(bin, "notifyd")))
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", units, err, out)
	}
}

// TestSocketActivationWrongNotifySocket passes a stream socket named
// "notify": notifyd refuses it with a clear error and exits 1, without a
// panic.
func TestSocketActivationWrongNotifySocket(t *testing.T) {
	dir := shortDir(t)
	stream, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "stream.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	f, err := stream.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`,
		filepath.Join(bin, "notifyd"), "--socket", filepath.Join(dir, "unused.sock"), "--dir", dir, "--bind", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=notify")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("notifyd with a stream socket as its notify socket: %v, want exit status 1:\n%s", err, out)
	}
	if !strings.Contains(string(out), "not a datagram socket") || strings.Contains(string(out), "panic") {
		t.Fatalf("notifyd's output does not say plainly that the socket is not a datagram socket:\n%s", out)
	}
}

// TestManagedUnitLetsNotifydSpeak: in managed mode notifyd, the master's
// child, tells systemd when the application is ready; the example unit must
// let it (systemd-analyze verifies the unit in TestSystemdUnitsVerify).
func TestManagedUnitLetsNotifydSpeak(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/systemd/myapp-managed.service"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for _, want := range []string{"Type=notify", "NotifyAccess=all", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !slices.Contains(lines, want) {
			t.Errorf("myapp-managed.service lacks the line %q", want)
		}
	}
}
