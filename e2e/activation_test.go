package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestSocketActivationChecksEachDescriptor passes notifyd descriptors that
// are not what they claim: each is refused at start with exit status 1 and
// an error that names the descriptor at fault.
func TestSocketActivationChecksEachDescriptor(t *testing.T) {
	dir := shortDir(t)
	unbound, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	unboundFile := os.NewFile(uintptr(unbound), "unbound")
	defer unboundFile.Close()
	dgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "bound.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer dgram.Close()
	dgramFile, _ := dgram.File()
	defer dgramFile.Close()
	notListening, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	notListeningFile := os.NewFile(uintptr(notListening), "stream")
	defer notListeningFile.Close()

	for _, tt := range []struct {
		name  string
		files []*os.File
		env   []string
		want  string
	}{
		{"unbound datagram socket", []*os.File{unboundFile}, []string{"LISTEN_FDS=1"},
			"notifyd: socket activation: descriptor 3 is not bound to an address: workers could not reach it"},
		{"closed descriptor", []*os.File{dgramFile}, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=notify:http"},
			"notifyd: socket activation: descriptor 4 (http) is not open: nothing was passed there"},
		{"stream socket not listening", []*os.File{dgramFile, notListeningFile}, []string{"LISTEN_FDS=2"},
			"notifyd: socket activation: descriptor 4 is not a listening stream socket: the http socket must be listening"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`,
				filepath.Join(bin, "notifyd"), "--socket", filepath.Join(dir, "unused.sock"), "--dir", dir, "--bind", "127.0.0.1:0")
			cmd.Env = append(os.Environ(), tt.env...)
			cmd.ExtraFiles = tt.files
			code, out := exitCode(t, cmd)
			if code != 1 || strings.TrimSpace(out) != tt.want {
				t.Fatalf("exit %d, output %q; want 1 and %q", code, out, tt.want)
			}
		})
	}
}

// TestSocketActivationForAnotherProcessIsLogged passes a socket with a
// LISTEN_PID that is not notifyd's: notifyd says so in one line, and binds
// its own socket instead.
func TestSocketActivationForAnotherProcessIsLogged(t *testing.T) {
	dir := shortDir(t)
	d := launch(t, dir, []string{"LISTEN_FDS=1", "LISTEN_PID=1"}, nil)
	d.waitStarted(t)
	log := d.log.String()
	if n := strings.Count(log, "LISTEN_FDS is not for notifyd"); n != 1 {
		t.Fatalf("%d lines about the foreign LISTEN_PID, want 1:\n%s", n, log)
	}
	if !strings.Contains(log, "listen_pid=1") {
		t.Fatalf("the line does not name LISTEN_PID:\n%s", log)
	}
	if _, err := os.Stat(d.socket); err != nil {
		t.Fatalf("notifyd did not bind its own socket: %v", err)
	}
}
