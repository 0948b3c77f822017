package protocol

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func listen(t *testing.T, cfg ListenConfig) *Conn {
	t.Helper()
	conn, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readOne reads the next datagram from conn, waiting at most waitLimit, and
// closes the descriptors that came with it.
func readOne(t *testing.T, conn *Conn) (data string, cred *Credentials) {
	t.Helper()
	if err := conn.c.SetReadDeadline(time.Now().Add(waitLimit)); err != nil {
		t.Fatal(err)
	}
	d, err := conn.Read()
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	defer d.Close()
	if d.Cred != nil {
		c := withoutPidfd(*d.Cred) // while the pidfd is still open
		cred = &c
	}
	return string(d.Data), cred
}

// checkReceives sends payload to addr with a Client and checks that conn
// reads exactly it, with this process's credentials.
func checkReceives(t *testing.T, conn *Conn, addr, payload string) {
	t.Helper()
	c := dial(t, addr)
	send(t, c, payload)
	data, cred := readOne(t, conn)
	if data != payload {
		t.Errorf("read %q, want %q", data, payload)
	}
	if cred == nil || *cred != self() {
		t.Errorf("credentials %+v, want %+v", cred, self())
	}
}

// staleSocket leaves a socket file at path that nothing listens on.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	unix.Close(fd)
	if err != nil {
		t.Fatalf("bind %s: %v", path, err)
	}
}

func lstat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("lstat: %v", err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

func abstractName(t *testing.T) string {
	t.Helper()
	return "@nd-test-" + rand.Text()
}

func TestListenMode(t *testing.T) {
	tests := []struct {
		name string
		mode fs.FileMode
	}{
		{"0660", 0o660},
		{"0600", 0o600},
		{"0666 beyond the umask", 0o666},
		{"0640", 0o640},
		{"0000", 0},
		{"setuid bit dropped", fs.ModeSetuid | 0o660},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(sockDir(t), "n.sock")
			conn := listen(t, ListenConfig{Path: path, Mode: tt.mode, GID: -1})
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket {
				t.Errorf("file type %v, want a socket", fi.Mode().Type())
			}
			if fi.Mode()&^fs.ModeType != tt.mode.Perm() {
				t.Errorf("mode %v, want %v", fi.Mode()&^fs.ModeType, tt.mode.Perm())
			}
			if got := conn.Addr(); got != path {
				t.Errorf("Addr() = %q, want %q", got, path)
			}
			checkReceives(t, conn, path, "READY=1")
		})
	}
}

func TestListenGroup(t *testing.T) {
	tests := []struct {
		name string
		gid  int
		want int
	}{
		{name: "default group", gid: -1, want: os.Getgid()},
		{name: "nogroup", gid: 65534, want: 65534},
		{name: "group 1", gid: 1, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(sockDir(t), "n.sock")
			listen(t, ListenConfig{Path: path, Mode: 0o660, GID: tt.gid})
			st := lstat(t, path)
			if int(st.Gid) != tt.want {
				t.Errorf("group %d, want %d", st.Gid, tt.want)
			}
			if int(st.Uid) != os.Getuid() {
				t.Errorf("owner %d, want %d", st.Uid, os.Getuid())
			}
			if st.Mode&0o7777 != 0o660 {
				t.Errorf("mode %o, want 660", st.Mode&0o7777)
			}
		})
	}
}

func TestListenAbstract(t *testing.T) {
	name := abstractName(t)
	conn := listen(t, ListenConfig{Path: name, Mode: 0o600, GID: -1})
	if got := conn.Addr(); got != name {
		t.Errorf("Addr() = %q, want %q", got, name)
	}
	checkReceives(t, conn, name, "READY=1\nSTATUS=abstract")
	if _, err := os.Lstat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat(%q) = %v, want no such file: an abstract socket has no file", name, err)
	}

	again, err := Listen(ListenConfig{Path: name, Mode: 0o600, GID: -1})
	if err == nil {
		again.Close()
		t.Fatal("a second Listen on a live abstract name succeeded")
	}
	if !errors.Is(err, ErrInUse) {
		t.Errorf("second Listen error = %v, want ErrInUse", err)
	}
	checkReceives(t, conn, name, "STATUS=still mine")

	if err := conn.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err = Dial(name)
	if err == nil || !strings.Contains(err.Error(), "nothing listens") {
		t.Errorf("Dial after Close = %v, want an error saying nothing listens", err)
	}
}

func TestListenRefuses(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares path and returns a check that it was left untouched.
		setup  func(t *testing.T, dir, path string) func(t *testing.T)
		inUse  bool
		substr string
	}{
		{
			name: "regular file",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				writeFile(t, path, "precious")
				return func(t *testing.T) { checkFile(t, path, "precious") }
			},
			substr: "is not a socket (a regular file)",
		},
		{
			name: "empty regular file",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				writeFile(t, path, "")
				return func(t *testing.T) { checkFile(t, path, "") }
			},
			substr: "is not a socket (a regular file)",
		},
		{
			name: "directory",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(path, "inside"), "x")
				return func(t *testing.T) { checkFile(t, filepath.Join(path, "inside"), "x") }
			},
			substr: "is not a socket (a directory)",
		},
		{
			name: "symlink to a regular file",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				target := filepath.Join(dir, "target")
				writeFile(t, target, "precious")
				symlink(t, target, path)
				return func(t *testing.T) {
					checkSymlink(t, path, target)
					checkFile(t, target, "precious")
				}
			},
			substr: "is not a socket (a symlink)",
		},
		{
			name: "symlink to a stale socket",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				target := filepath.Join(dir, "target.sock")
				staleSocket(t, target)
				ino := lstat(t, target).Ino
				symlink(t, target, path)
				return func(t *testing.T) {
					checkSymlink(t, path, target)
					if st := lstat(t, target); st.Ino != ino || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
						t.Errorf("symlink target was replaced")
					}
				}
			},
			substr: "is not a socket (a symlink)",
		},
		{
			name: "symlink to a live socket",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				target := filepath.Join(dir, "target.sock")
				conn := listen(t, ListenConfig{Path: target, Mode: 0o600, GID: -1})
				symlink(t, target, path)
				return func(t *testing.T) {
					checkSymlink(t, path, target)
					checkReceives(t, conn, target, "READY=1")
				}
			},
			substr: "is not a socket (a symlink)",
		},
		{
			name: "dangling symlink",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				target := filepath.Join(dir, "nowhere")
				symlink(t, target, path)
				return func(t *testing.T) {
					checkSymlink(t, path, target)
					if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("symlink target %s now exists: %v", target, err)
					}
				}
			},
			substr: "is not a socket (a symlink)",
		},
		{
			name: "live listener",
			setup: func(t *testing.T, dir, path string) func(t *testing.T) {
				conn := listen(t, ListenConfig{Path: path, Mode: 0o600, GID: -1})
				ino := lstat(t, path).Ino
				return func(t *testing.T) {
					if st := lstat(t, path); st.Ino != ino || st.Mode&0o777 != 0o600 {
						t.Errorf("socket file was replaced or changed: inode %d mode %o, want inode %d mode 600", st.Ino, st.Mode&0o777, ino)
					}
					checkReceives(t, conn, path, "READY=1")
				}
			},
			inUse:  true,
			substr: "socket is in use by a running process",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := sockDir(t)
			path := filepath.Join(dir, "n.sock")
			untouched := tt.setup(t, dir, path)
			conn, err := Listen(ListenConfig{Path: path, Mode: 0o666, GID: -1})
			if err == nil {
				conn.Close()
				t.Fatalf("Listen(%s) succeeded over a %s", path, tt.name)
			}
			if conn != nil {
				t.Errorf("Listen returned a Conn with its error %v", err)
			}
			if errors.Is(err, ErrInUse) != tt.inUse {
				t.Errorf("errors.Is(%v, ErrInUse) = %v, want %v", err, !tt.inUse, tt.inUse)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("error %q does not say %q", err, tt.substr)
			}
			untouched(t)
		})
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	tests := []struct {
		name  string
		stale func(t *testing.T, path string)
	}{
		{name: "bound and closed", stale: staleSocket},
		{name: "left by a closed Conn", stale: func(t *testing.T, path string) {
			conn, err := Listen(ListenConfig{Path: path, Mode: 0o600, GID: -1})
			if err != nil {
				t.Fatal(err)
			}
			conn.c.Close() // closes the socket without removing its file
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(sockDir(t), "n.sock")
			tt.stale(t, path)
			if st := lstat(t, path); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
				t.Fatalf("setup left mode %o, want a socket", st.Mode)
			}
			conn := listen(t, ListenConfig{Path: path, Mode: 0o640, GID: -1})
			if st := lstat(t, path); st.Mode&0o777 != 0o640 {
				t.Errorf("mode %o, want 640", st.Mode&0o777)
			}
			checkReceives(t, conn, path, "READY=1")
		})
	}
}

func TestCloseRemovesOnlyItsOwnFile(t *testing.T) {
	tests := []struct {
		name string
		// replace puts something else at path after Listen, and returns a
		// check that it is still there after Close.
		replace func(t *testing.T, dir, path string) func(t *testing.T)
	}{
		{name: "own socket", replace: func(t *testing.T, dir, path string) func(t *testing.T) {
			return func(t *testing.T) {
				if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("socket file after Close: %v, want it removed", err)
				}
			}
		}},
		{name: "replaced by a regular file", replace: func(t *testing.T, dir, path string) func(t *testing.T) {
			remove(t, path)
			writeFile(t, path, "someone else's")
			return func(t *testing.T) { checkFile(t, path, "someone else's") }
		}},
		{name: "replaced by a symlink", replace: func(t *testing.T, dir, path string) func(t *testing.T) {
			remove(t, path)
			symlink(t, "elsewhere", path)
			return func(t *testing.T) { checkSymlink(t, path, "elsewhere") }
		}},
		{name: "replaced by another listener", replace: func(t *testing.T, dir, path string) func(t *testing.T) {
			remove(t, path)
			other := listen(t, ListenConfig{Path: path, Mode: 0o600, GID: -1})
			return func(t *testing.T) {
				if st := lstat(t, path); st.Mode&0o777 != 0o600 {
					t.Errorf("mode %o, want the other listener's 600", st.Mode&0o777)
				}
				checkReceives(t, other, path, "READY=1")
			}
		}},
		{name: "renamed away", replace: func(t *testing.T, dir, path string) func(t *testing.T) {
			moved := filepath.Join(dir, "moved.sock")
			if err := os.Rename(path, moved); err != nil {
				t.Fatal(err)
			}
			return func(t *testing.T) {
				if st := lstat(t, moved); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
					t.Errorf("renamed socket file has mode %o", st.Mode)
				}
				if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Lstat(%s) = %v, want no such file", path, err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := sockDir(t)
			path := filepath.Join(dir, "n.sock")
			conn, err := Listen(ListenConfig{Path: path, Mode: 0o660, GID: -1})
			if err != nil {
				t.Fatal(err)
			}
			check := tt.replace(t, dir, path)
			if err := conn.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			check(t)
		})
	}
}

func TestDialErrors(t *testing.T) {
	messages := []string{"does not exist", "is not a socket", "nothing listens"}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string
		want  string
	}{
		{name: "missing path", want: "does not exist", setup: func(t *testing.T, dir string) string {
			return filepath.Join(dir, "missing.sock")
		}},
		{name: "missing directory", want: "does not exist", setup: func(t *testing.T, dir string) string {
			return filepath.Join(dir, "no", "such.sock")
		}},
		{name: "regular file", want: "is not a socket", setup: func(t *testing.T, dir string) string {
			path := filepath.Join(dir, "file")
			writeFile(t, path, "READY=1")
			return path
		}},
		{name: "directory", want: "is not a socket", setup: func(t *testing.T, dir string) string {
			return dir
		}},
		{name: "stale socket", want: "nothing listens", setup: func(t *testing.T, dir string) string {
			path := filepath.Join(dir, "stale.sock")
			staleSocket(t, path)
			return path
		}},
		{name: "abstract name without listener", want: "nothing listens", setup: func(t *testing.T, dir string) string {
			return abstractName(t)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.setup(t, sockDir(t))
			c, err := Dial(addr)
			if err == nil {
				c.Close()
				t.Fatalf("Dial(%s) succeeded", addr)
			}
			for _, m := range messages {
				if got := strings.Contains(err.Error(), m); got != (m == tt.want) {
					t.Errorf("Dial error %q: contains %q = %v, want %v", err, m, got, !got)
				}
			}
			if !strings.Contains(err.Error(), addr) {
				t.Errorf("Dial error %q does not name %s", err, addr)
			}
		})
	}
}

func TestSendAfterListenerCloses(t *testing.T) {
	path := filepath.Join(sockDir(t), "n.sock")
	conn, err := Listen(ListenConfig{Path: path, Mode: 0o600, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, path)
	send(t, c, "READY=1")
	conn.Close()
	err = c.Send([]byte("STOPPING=1"), waitLimit)
	if err == nil || !strings.Contains(err.Error(), "no longer listening") {
		t.Errorf("Send after the listener closed = %v, want an error saying it is no longer listening", err)
	}
}

func TestBarrierWithoutReader(t *testing.T) {
	path := filepath.Join(sockDir(t), "n.sock")
	listen(t, ListenConfig{Path: path, Mode: 0o600, GID: -1})
	c := dial(t, path)
	err := c.Barrier(100 * time.Millisecond)
	if !errors.Is(err, ErrNoAck) {
		t.Errorf("Barrier with nobody reading = %v, want ErrNoAck", err)
	}
}

func TestReadDescriptorsAndCredentials(t *testing.T) {
	tests := []struct {
		name  string
		fds   int
		plain bool
	}{
		{name: "client without descriptors"},
		{name: "client with one descriptor", fds: 1},
		{name: "client with the most descriptors", fds: maxFDs},
		{name: "plain socket with two descriptors", fds: 2, plain: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(sockDir(t), "n.sock")
			conn := listen(t, ListenConfig{Path: path, Mode: 0o600, GID: -1})
			r, w := pipes(t, tt.fds)
			if tt.plain {
				plainSend(t, path, "READY=1", w...)
			} else {
				send(t, dial(t, path), "READY=1", w...)
			}
			closeAll(w)

			if err := conn.c.SetReadDeadline(time.Now().Add(waitLimit)); err != nil {
				t.Fatal(err)
			}
			d, err := conn.Read()
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if string(d.Data) != "READY=1" || d.Truncated || d.ControlTruncated {
				t.Errorf("Read = %q truncated %v control truncated %v, want %q and no truncation", d.Data, d.Truncated, d.ControlTruncated, "READY=1")
			}
			if d.Cred == nil || withoutPidfd(*d.Cred) != self() {
				t.Errorf("Cred = %+v, want %+v", d.Cred, self())
			}
			if len(d.FDs) != tt.fds {
				t.Errorf("got %d descriptors, want %d", len(d.FDs), tt.fds)
			}
			for _, fd := range r {
				if hungUp(t, fd) {
					t.Fatal("a pipe hung up while the received descriptor is still open")
				}
			}
			d.Close()
			if d.FDs != nil {
				t.Errorf("FDs = %v after Close, want nil", d.FDs)
			}
			for i, fd := range r {
				if !hungUp(t, fd) {
					t.Errorf("pipe %d still open after Datagram.Close", i)
				}
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func checkFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read %s: %v", path, err)
		return
	}
	if string(got) != want {
		t.Errorf("%s holds %q, want %q", path, got, want)
	}
}

func symlink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

func checkSymlink(t *testing.T, path, target string) {
	t.Helper()
	got, err := os.Readlink(path)
	if err != nil || got != target {
		t.Errorf("Readlink(%s) = %q, %v; want %q", path, got, err, target)
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
