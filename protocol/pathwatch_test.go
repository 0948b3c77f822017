package protocol

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// queued returns how many bytes of events wait in w's inotify queue.
func queued(t *testing.T, w *pathWatch) int {
	t.Helper()
	rc, err := w.f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if cerr := rc.Control(func(fd uintptr) {
		n, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
	}); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("FIONREAD: %v", err)
	}
	return n
}

// churn creates, renames and removes files beside the watched one, as the
// state files do beside the notify socket.
func churn(t *testing.T, dir string) {
	t.Helper()
	for i := range 20 {
		tmp := filepath.Join(dir, ".worker."+strconv.Itoa(i)+".tmp")
		if err := os.WriteFile(tmp, []byte("PID=1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		final := filepath.Join(dir, ".worker."+strconv.Itoa(i))
		if err := os.Rename(tmp, final); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(final); err != nil {
			t.Fatal(err)
		}
	}
}

func newWatchedFile(t *testing.T) (dir, path string, w *pathWatch) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "notify.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := watchPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	if err := w.Arm(); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	return dir, path, w
}

// TestPathWatchIgnoresOtherFiles checks that files coming and going beside
// the watched one queue no event at all, so they never wake the watch, and
// that each way of taking the watched file away does.
func TestPathWatchIgnoresOtherFiles(t *testing.T) {
	tests := []struct {
		name string
		take func(t *testing.T, path string)
	}{
		{name: "removed", take: func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "renamed away", take: func(t *testing.T, path string) {
			if err := os.Rename(path, path+".moved"); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "replaced", take: func(t *testing.T, path string) {
			if err := os.WriteFile(path+".new", []byte("not a socket\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, path, w := newWatchedFile(t)
			churn(t, dir)
			if n := queued(t, w); n != 0 {
				t.Fatalf("%d bytes of events queued by other files in the directory, want none", n)
			}
			tt.take(t, path)
			if err := w.Wait(); err != nil {
				t.Fatalf("Wait: %v", err)
			}
		})
	}
}

// TestPathWatchEmptyPath arms the watch while nothing is at the path: then
// it watches the directory's entries, and wakes when a file of the watched
// name appears.
func TestPathWatchEmptyPath(t *testing.T) {
	dir, path, w := newWatchedFile(t)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Fatalf("Wait for the removal: %v", err)
	}
	if err := w.Arm(); err != nil {
		t.Fatalf("Arm on an empty path: %v", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Fatalf("Wait for the new file: %v", err)
	}
	// Armed on the new file, the directory's entries are quiet again.
	if err := w.Arm(); err != nil {
		t.Fatalf("Arm on the new file: %v", err)
	}
	if n := queued(t, w); n > 0 {
		if _, err := w.f.Read(w.buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
	churn(t, dir)
	if n := queued(t, w); n != 0 {
		t.Fatalf("%d bytes of events queued by other files after re-arming on the new file, want none", n)
	}
}

// TestPathWatchDirGone removes the directory: Wait says so, and so does
// Arm afterwards.
func TestPathWatchDirGone(t *testing.T) {
	dir, path, w := newWatchedFile(t)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	err := w.Wait()
	if err == nil { // the file's removal may come as its own read
		err = w.Wait()
	}
	if !errors.Is(err, errDirGone) {
		t.Fatalf("Wait = %v, want errDirGone", err)
	}
	if err := w.Arm(); !errors.Is(err, errDirGone) {
		t.Fatalf("Arm = %v, want errDirGone", err)
	}
}

// TestPathWatchClose ends a Wait in progress.
func TestPathWatchClose(t *testing.T) {
	_, _, w := newWatchedFile(t)
	done := make(chan error, 1)
	go func() { done <- w.Wait() }()
	w.Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Wait after Close = %v, want os.ErrClosed", err)
	}
}
