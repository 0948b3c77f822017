package e2e

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/notifyd/notifyd/internal/addrfile"
)

// TestAddressFileNamesEveryListener checks that --address-file names the
// addresses notifyd really serves, and that the file goes when notifyd stops.
func TestAddressFileNamesEveryListener(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir, "--agent-bind", "127.0.0.1:0")
	a, err := addrfile.Read(d.addrFile)
	if err != nil {
		t.Fatal(err)
	}
	if a.HTTP != d.addr || a.Socket != d.socket {
		t.Fatalf("address file %+v, want http %s and socket %s", a, d.addr, d.socket)
	}
	wantHealth(t, d, 500, "0 workers ready\n")
	conn, err := net.Dial("tcp", a.Agent)
	if err != nil {
		t.Fatalf("dial the agent at %q: %v", a.Agent, err)
	}
	reply := make([]byte, 64)
	n, _ := conn.Read(reply)
	conn.Close()
	if !strings.HasSuffix(string(reply[:n]), "\n") || n == 0 {
		t.Fatalf("agent at %s answered %q, want one line", a.Agent, reply[:n])
	}
	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("notifyd exited with %v after SIGTERM", err)
	}
	if _, err := os.Stat(d.addrFile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("address file after the stop: %v, want it removed", err)
	}
}

func TestAddressFileBadValues(t *testing.T) {
	dir := shortDir(t)
	for _, tt := range []struct{ name, value, want string }{
		{"missing directory", filepath.Join(dir, "no", "address.json"), "its directory does not exist"},
		{"a directory", dir, "is a directory; name a file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "notifyd"), "--dir", dir, "--socket", dir+"/s", "--bind", "127.0.0.1:0", "--address-file", tt.value)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit = %v, want status 2; output %q", err, out)
			}
			want := `notifyd: --address-file "` + tt.value + `": ` + tt.want + "\n"
			if string(out) != want {
				t.Fatalf("output %q, want %q", out, want)
			}
		})
	}
}

// TestAddressFileSharedByTwoInstances gives two notifyds one --address-file:
// the one that stops first leaves the other's file in place, and the last
// one removes it.
func TestAddressFileSharedByTwoInstances(t *testing.T) {
	shared := filepath.Join(shortDir(t), "address.json")
	first, second := addressFileInstance(t, shared), addressFileInstance(t, shared)
	waitFor(t, "the second instance's addresses", func() bool {
		a, err := addrfile.Read(shared)
		return err == nil && a.Socket == second.socket
	})
	if err := first.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("first notifyd: %v", err)
	}
	if a, err := addrfile.Read(shared); err != nil || a.Socket != second.socket {
		t.Fatalf("after the first instance stopped: %+v, %v; want the second's addresses", a, err)
	}
	if err := second.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("second notifyd: %v", err)
	}
	if _, err := os.Stat(shared); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("address file after both stopped: %v, want it removed", err)
	}
}

// TestAddressFileTakenByAnotherUser pre-creates the address file as another
// user in a sticky directory: notifyd, run as nobody, starts all the same,
// says why it has no address file, and leaves that file alone.
func TestAddressFileTakenByAnotherUser(t *testing.T) {
	setpriv := need(t, "setpriv")
	needRoot(t, "run notifyd as another user")
	shared := shortDir(t)
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(shared, "address.json")
	if err := os.WriteFile(path, []byte("theirs\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := addressFileInstance(t, path, setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups")
	waitFor(t, "the line saying why", func() bool {
		return strings.Contains(d.log.String(), `msg="address file not written; notifyd serves without it"`)
	})
	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("notifyd: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "theirs\n" {
		t.Fatalf("the other user's file after the stop: %q, %v", b, err)
	}
}

// addressFileInstance starts notifyd with --address-file path, without the
// harness's own address file, behind wrap (a command that runs it as
// another user) when given.
func addressFileInstance(t *testing.T, path string, wrap ...string) *daemon {
	t.Helper()
	dir := shortDir(t)
	if len(wrap) > 0 {
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	d := &daemon{dir: dir, socket: filepath.Join(dir, "notify.sock"), log: &syncBuffer{}, done: make(chan struct{})}
	argv := append(wrap, filepath.Join(bin, "notifyd"), "--socket", d.socket, "--dir", dir, "--bind", "127.0.0.1:0", "--address-file", path)
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.follow(t, d.cmd.Start())
	waitFor(t, "notifyd to start", func() bool { return strings.Contains(d.log.String(), `msg="notifyd started"`) })
	return d
}
