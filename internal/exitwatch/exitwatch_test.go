//go:build linux

package exitwatch_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"

	"github.com/notifyd/notifyd/internal/exitwatch"
	"github.com/notifyd/notifyd/internal/proctest"
)

func TestWait(t *testing.T) {
	c := proctest.Sleeper(t)
	p, err := exitwatch.Open(c.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if exited, err := p.Wait(ctx); exited || err != nil {
		t.Fatalf("Wait with a cancelled context = %v, %v; want false, nil", exited, err)
	}

	c.Process.Kill() // a zombie until reaped: exited all the same
	if exited, err := p.Wait(context.Background()); !exited || err != nil {
		t.Fatalf("Wait after SIGKILL = %v, %v; want true, nil", exited, err)
	}
	c.Wait()
	if _, err := exitwatch.Open(c.Process.Pid); !errors.Is(err, exitwatch.ErrNoProcess) {
		t.Fatalf("Open of a reaped pid = %v, want ErrNoProcess", err)
	}
}

func TestProcessOfRefusesAThread(t *testing.T) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if tid == pid {
			continue
		}
		if _, err := exitwatch.ProcessOf(tid); !errors.Is(err, exitwatch.ErrThread) {
			t.Fatalf("ProcessOf(thread %d) = %v, want ErrThread", tid, err)
		}
		if _, err := exitwatch.Open(tid); !errors.Is(err, exitwatch.ErrThread) {
			t.Fatalf("Open(thread %d) = %v, want ErrThread", tid, err)
		}
		if got, err := exitwatch.ProcessOf(pid); got != pid || err != nil {
			t.Fatalf("ProcessOf(%d) = %d, %v; want the pid", pid, got, err)
		}
		return
	}
	t.Fatal("the test process has no thread besides its main one")
}
