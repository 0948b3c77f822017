//go:build linux

package registry

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
	"golang.org/x/sys/unix"
)

// TestExitSeenByPidfd checks that the pidfd watcher alone drops a killed
// worker: the sweep interval is an hour, so no sweep can run meanwhile.
func TestExitSeenByPidfd(t *testing.T) {
	tests := []struct {
		name string
		reap bool
	}{
		{name: "killed and reaped", reap: true},
		{name: "killed, left a zombie", reap: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection, cfg.ReapInterval = Pidfd, time.Hour
			r := startRegistry(t, cfg)
			victim, survivor := startSleep(t), startSleep(t)
			send(t, r, ready(victim.pid()), rootCreds())
			send(t, r, ready(survivor.pid()), rootCreds())
			wantSummary(t, r, Summary{Ready: 2, Workers: 2})

			victim.kill(t)
			if tt.reap {
				victim.reap()
			}
			eventually(t, "the watcher to drop the killed worker", func() bool {
				return r.Summary() == Summary{Ready: 1, Workers: 1}
			})
			if !tt.reap {
				state, _ := procStat(t, victim.pid())
				if state != "Z" {
					t.Fatalf("killed child is in state %q, want a zombie", state)
				}
			}
			if got := pids(r.Workers()); !slices.Equal(got, []int{survivor.pid()}) {
				t.Fatalf("registered pids %v, want [%d]", got, survivor.pid())
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(survivor.pid())}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(survivor.pid()))
			}
			if got := r.Exits(); got != 1 {
				t.Fatalf("Exits() = %d, want 1", got)
			}
			victim.reap()
		})
	}
}

// TestExitSeenBySweep checks the fallback for kernels without pidfds.
func TestExitSeenBySweep(t *testing.T) {
	tests := []struct {
		name string
		reap bool
	}{
		{name: "killed and reaped", reap: true},
		{name: "killed, left a zombie", reap: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection, cfg.ReapInterval = Sweep, 50*time.Millisecond
			r := startRegistry(t, cfg)
			victim, survivor := startSleep(t), startSleep(t)
			send(t, r, ready(victim.pid()), rootCreds())
			send(t, r, ready(survivor.pid()), rootCreds())

			victim.kill(t)
			if tt.reap {
				victim.reap()
			}
			eventually(t, "the sweep to drop the killed worker", func() bool {
				return r.Summary() == Summary{Ready: 1, Workers: 1}
			})
			if got := pids(r.Workers()); !slices.Equal(got, []int{survivor.pid()}) {
				t.Fatalf("registered pids %v, want [%d]", got, survivor.pid())
			}
			if got := savedNames(t, r); !slices.Equal(got, []string{stateName(survivor.pid())}) {
				t.Fatalf("state directory holds %q, want only %q", got, stateName(survivor.pid()))
			}
			if got := r.Exits(); got != 1 {
				t.Fatalf("Exits() = %d, want 1", got)
			}
			victim.reap()
		})
	}
}

func TestZombieIsNotRegistered(t *testing.T) {
	for _, detection := range []Detection{Pidfd, Sweep} {
		t.Run(detection.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection = detection
			r := startRegistry(t, cfg)
			c := startSleep(t)
			c.kill(t)
			waitZombie(t, c.pid())

			err := r.HandleMessage(ready(c.pid()), rootCreds())
			if !errors.Is(err, ErrNoProcess) {
				t.Fatalf("READY=1 for a zombie: %v, want ErrNoProcess", err)
			}
			wantSummary(t, r, Summary{})
			if got := savedNames(t, r); len(got) != 0 {
				t.Fatalf("state directory holds %q, want nothing", got)
			}
			// Still a zombie when the registry said no: nothing reaped it.
			if state, _ := procStat(t, c.pid()); state != "Z" {
				t.Fatalf("child is in state %q after the assertion, want a zombie", state)
			}
			c.reap()
		})
	}
}

// TestThreadIsNotRegistered checks a READY=1 naming the id of a thread that
// is not a process: /proc shows such a thread under its own id, but it has
// no pidfd and its exit is not a process exit, so it is never a worker.
func TestThreadIsNotRegistered(t *testing.T) {
	for _, detection := range []Detection{Pidfd, Sweep} {
		t.Run(detection.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection = detection
			rec := &recorder{}
			cfg.OnChange = rec.onChange
			r := startRegistry(t, cfg)
			tid := otherThread(t)

			err := r.HandleMessage(ready(tid), rootCreds())
			if !errors.Is(err, ErrNoProcess) {
				t.Fatalf("READY=1 for thread %d: %v, want ErrNoProcess", tid, err)
			}
			if reason := protocol.ReasonOf(err); reason != "no_such_process" {
				t.Fatalf("ReasonOf = %q, want no_such_process", reason)
			}
			wantSummary(t, r, Summary{})
			if ws := r.Workers(); len(ws) != 0 {
				t.Fatalf("Workers() = %+v, want none", ws)
			}
			if got := savedNames(t, r); len(got) != 0 {
				t.Fatalf("state directory holds %q, want nothing", got)
			}
			if got := rec.summaries(); !slices.Equal(got, []Summary{{}}) {
				t.Fatalf("OnChange saw %+v, want only the initial summary", got)
			}
			if got := r.Exits(); got != 0 {
				t.Fatalf("Exits() = %d, want 0", got)
			}
		})
	}
}

// otherThread returns the id of a thread of the test process other than its
// main thread, the one whose id is the pid. A goroutine locked to the thread
// keeps it alive until the test ends.
func otherThread(t *testing.T) int {
	t.Helper()
	release := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(release)
		wg.Wait()
	})
	// Two goroutines locked at once run on two threads, and at most one of
	// them is the main thread.
	for range 2 {
		tids := make(chan int)
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tids <- unix.Gettid()
			<-release
		})
		tid := <-tids
		if tid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/self/task/" + strconv.Itoa(tid)); err != nil {
			t.Fatalf("thread %d is not in /proc/self/task: %v", tid, err)
		}
		return tid
	}
	t.Fatal("two locked goroutines both ran on the main thread")
	return 0
}

// TestPidReuse hands the pid of a dead, still registered worker to a new
// process, through ns_last_pid, and checks that the new process is never
// taken for the old worker. The sweep cases sweep only when the test says
// so; the pidfd cases never run the watcher, so the message for the reused
// pid arrives before any exit event is handled, which on a busy machine can
// happen too.
func TestPidReuse(t *testing.T) {
	tests := []struct {
		name      string
		detection Detection
		// act is what happens once the pid belongs to the new process.
		act      func(t *testing.T, r *Registry, pid int)
		want     Summary
		wantFile bool
	}{
		{
			name:      "pidfd: ready registers the new process",
			detection: Pidfd,
			act: func(t *testing.T, r *Registry, pid int) {
				send(t, r, ready(pid), rootCreds())
			},
			want:     Summary{Ready: 1, Workers: 1},
			wantFile: true,
		},
		{
			name:      "pidfd: stopping drops the old worker",
			detection: Pidfd,
			act: func(t *testing.T, r *Registry, pid int) {
				send(t, r, stopping(pid), rootCreds())
			},
			want: Summary{},
		},
		{
			name:      "sweep drops the old worker",
			detection: Sweep,
			act: func(t *testing.T, r *Registry, pid int) {
				r.sweep()
			},
			want: Summary{},
		},
		{
			name:      "sweep: ready registers the new process",
			detection: Sweep,
			act: func(t *testing.T, r *Registry, pid int) {
				send(t, r, ready(pid), rootCreds())
			},
			want:     Summary{Ready: 1, Workers: 1},
			wantFile: true,
		},
		{
			name:      "sweep: stopping drops the old worker",
			detection: Sweep,
			act: func(t *testing.T, r *Registry, pid int) {
				send(t, r, stopping(pid), rootCreds())
			},
			want: Summary{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			// A sweep that only runs when the test calls it, or a watcher
			// that does not run, keeps the dead worker registered until the
			// pid is reused.
			cfg.Detection, cfg.ReapInterval = tt.detection, time.Hour
			r, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			t.Cleanup(func() { r.Close() })
			old := startSleep(t)
			pid := old.pid()
			send(t, r, protocol.Message{Lifecycle: protocol.Ready, PID: pid, Status: text("old")}, rootCreds())
			oldStart := oneWorker(t, r).StartTime
			old.killAndReap(t)
			// Start times count clock ticks; let at least one pass so that
			// the two processes differ in theirs.
			time.Sleep(50 * time.Millisecond)

			reused := startWithPid(t, pid)
			newStart := startTimeOf(t, reused.pid())
			if newStart == oldStart {
				t.Skipf("the new process has the old start time %d: the test cannot tell them apart", oldStart)
			}
			tt.act(t, r, pid)

			wantSummary(t, r, tt.want)
			if got := r.Exits(); got != 1 {
				t.Fatalf("Exits() = %d, want 1 (the replaced worker)", got)
			}
			if !tt.wantFile {
				if got := savedNames(t, r); len(got) != 0 {
					t.Fatalf("state directory holds %q, want nothing", got)
				}
				return
			}
			w := oneWorker(t, r)
			if w.PID != pid || w.StartTime != newStart || w.Status != "" || w.State != Ready {
				t.Fatalf("worker = %+v, want pid %d, start time %d, no status, ready", w, pid, newStart)
			}
			if got, want := readFile(t, statePath(cfg.Dir, pid)), wantState(w); got != want {
				t.Fatalf("state file holds\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// startWithPid starts "sleep 1000" under pid, which must be free, by setting
// the namespace's last allocated pid just below it. Other processes may take
// the pid first, so it tries a few times, and skips the test when the kernel
// does not let it choose.
func startWithPid(t *testing.T, pid int) *child {
	t.Helper()
	const lastPid = "/proc/sys/kernel/ns_last_pid"
	for range 50 {
		if err := os.WriteFile(lastPid, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose the next pid: %v", err)
		}
		c := startSleep(t)
		if c.pid() == pid {
			return c
		}
		c.killAndReap(t)
	}
	t.Skipf("pid %d was never handed to a new process", pid)
	return nil
}
