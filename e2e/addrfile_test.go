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
