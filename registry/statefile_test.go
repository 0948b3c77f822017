//go:build linux

package registry

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

func TestStateFileUnwritable(t *testing.T) {
	tests := []struct {
		name string
		// before runs after New and before READY=1; after runs after READY=1.
		before, after func(t *testing.T, dir string, pid int)
		// The StateFileErrors count after READY=1, after a STATUS= update
		// and after STOPPING=1.
		wantReady, wantStatus, wantStopping uint64
		// wantLeft is what the directory holds at the end, if it exists.
		wantLeft func(pid int) []string
	}{
		{
			name: "directory removed before ready",
			before: func(t *testing.T, dir string, pid int) {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
			},
			wantReady: 1, wantStatus: 2, wantStopping: 2,
		},
		{
			name: "directory removed after ready",
			after: func(t *testing.T, dir string, pid int) {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
			},
			// The removal of a file that is already gone is no error.
			wantReady: 0, wantStatus: 1, wantStopping: 1,
		},
		{
			name: "state file path is a directory",
			before: func(t *testing.T, dir string, pid int) {
				if err := os.Mkdir(statePath(dir, pid), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(statePath(dir, pid), "inside"), "x")
			},
			wantReady: 1, wantStatus: 2, wantStopping: 2,
			wantLeft: func(pid int) []string { return []string{stateName(pid)} },
		},
		{
			name: "temporary file path is a symlink",
			before: func(t *testing.T, dir string, pid int) {
				target := filepath.Join(t.TempDir(), "target")
				writeFile(t, target, "not yours\n")
				if err := os.Symlink(target, statePath(dir, pid)+".tmp"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if got := readFile(t, target); got != "not yours\n" {
						t.Errorf("symlink target changed to %q", got)
					}
				})
			},
			// The link is not followed: the file is written in its place,
			// and nothing is left behind.
			wantReady: 0, wantStatus: 0, wantStopping: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.retryInterval = time.Hour // each change is tried once, when it is made
			r := startRegistry(t, cfg)
			c := startSleep(t)
			pid := c.pid()
			if tt.before != nil {
				tt.before(t, cfg.Dir, pid)
			}

			send(t, r, ready(pid), rootCreds())
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if got := r.StateFileErrors(); got != tt.wantReady {
				t.Fatalf("StateFileErrors() = %d after READY=1, want %d", got, tt.wantReady)
			}
			if tt.after != nil {
				tt.after(t, cfg.Dir, pid)
			}

			send(t, r, protocol.Message{PID: pid, Status: text("still serving")}, rootCreds())
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})
			if w := oneWorker(t, r); w.State != Ready || w.Status != "still serving" {
				t.Fatalf("worker = %+v, want ready with the new status in memory", w)
			}
			if got := r.StateFileErrors(); got != tt.wantStatus {
				t.Fatalf("StateFileErrors() = %d after STATUS=, want %d", got, tt.wantStatus)
			}

			send(t, r, stopping(pid), rootCreds())
			wantSummary(t, r, Summary{})
			if got := r.StateFileErrors(); got != tt.wantStopping {
				t.Fatalf("StateFileErrors() = %d after STOPPING=1, want %d", got, tt.wantStopping)
			}
			if !exists(cfg.Dir) {
				return
			}
			want := []string{}
			if tt.wantLeft != nil {
				want = tt.wantLeft(pid)
			}
			if got := savedNames(t, r); !slices.Equal(got, want) {
				t.Fatalf("state directory holds %q, want %q", got, want)
			}
		})
	}
}

// TestStateFileUnwritableExit checks that the exit of a worker whose file
// could not be written is still seen.
func TestStateFileUnwritableExit(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	if err := os.RemoveAll(cfg.Dir); err != nil {
		t.Fatal(err)
	}
	c := startSleep(t)
	send(t, r, ready(c.pid()), rootCreds())
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	c.killAndReap(t)
	eventually(t, "the exit to be seen", func() bool { return r.Summary() == Summary{} })
	if got := r.StateFileErrors(); got != 1 {
		t.Fatalf("StateFileErrors() = %d, want 1", got)
	}
	if got := r.Exits(); got != 1 {
		t.Fatalf("Exits() = %d, want 1", got)
	}
}

// TestStateFileReplacesSymlink checks that a symlink at a state file's path
// is replaced by the file, and that its target is never written.
func TestStateFileReplacesSymlink(t *testing.T) {
	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	c := startSleep(t)
	target := filepath.Join(t.TempDir(), "target")
	writeFile(t, target, "not yours\n")
	if err := os.Symlink(target, statePath(cfg.Dir, c.pid())); err != nil {
		t.Fatal(err)
	}
	send(t, r, ready(c.pid()), rootCreds())
	fi, err := os.Lstat(statePath(cfg.Dir, c.pid()))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() {
		t.Fatalf("state file mode = %v, want a regular file", fi.Mode())
	}
	if got, want := readFile(t, statePath(cfg.Dir, c.pid())), wantState(oneWorker(t, r)); got != want {
		t.Fatalf("state file holds\n%q\nwant\n%q", got, want)
	}
	if got := readFile(t, target); got != "not yours\n" {
		t.Fatalf("symlink target changed to %q", got)
	}
	if got := r.StateFileErrors(); got != 0 {
		t.Fatalf("StateFileErrors() = %d, want 0", got)
	}
}

// TestStateFileMode checks that state files are 0644 whatever the umask.
// It changes the process umask, so it must not run in parallel.
func TestStateFileMode(t *testing.T) {
	for _, umask := range []int{0o022, 0o077, 0o027, 0o002, 0o000, 0o777} {
		t.Run("umask "+itoa(umask), func(t *testing.T) {
			cfg := testConfig(t)
			old := syscall.Umask(umask)
			t.Cleanup(func() { syscall.Umask(old) })
			r := startRegistry(t, cfg)
			c := startSleep(t)
			send(t, r, ready(c.pid()), rootCreds())
			fi, err := os.Lstat(statePath(cfg.Dir, c.pid()))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != 0o644 {
				t.Fatalf("state file mode = %v under umask %#o, want %v", fi.Mode(), umask, fs.FileMode(0o644))
			}
		})
	}
}

// TestStateFilesCatchUp checks that a state file that could not be written
// is written once the directory is back, with nothing sent in between.
func TestStateFilesCatchUp(t *testing.T) {
	cfg := testConfig(t)
	cfg.retryInterval = 10 * time.Millisecond
	r := startRegistry(t, cfg)
	c := startSleep(t)
	pid := c.pid()
	if err := os.RemoveAll(cfg.Dir); err != nil {
		t.Fatal(err)
	}

	send(t, r, protocol.Message{PID: pid, Lifecycle: protocol.Ready, Status: text("up")}, rootCreds())
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	if r.StateFileErrors() == 0 {
		t.Fatal("StateFileErrors() = 0 with the state directory gone")
	}
	if err := os.Mkdir(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the state file to be written", func() bool { return exists(statePath(cfg.Dir, pid)) })
	st, _, err := readState(statePath(cfg.Dir, pid))
	if err != nil {
		t.Fatal(err)
	}
	if st.pid != pid || st.status != "up" || st.startTime == 0 {
		t.Fatalf("state file says %+v, want pid %d, its start time and STATUS=up", st, pid)
	}

	failures := r.StateFileErrors()
	send(t, r, protocol.Message{PID: pid, Status: text("still up")}, rootCreds())
	send(t, r, stopping(pid), rootCreds())
	if got := r.StateFileErrors(); got != failures {
		t.Fatalf("StateFileErrors() went from %d to %d after the directory came back", failures, got)
	}
	if got := savedNames(t, r); len(got) != 0 {
		t.Fatalf("state directory holds %q after STOPPING=1, want nothing", got)
	}
}
