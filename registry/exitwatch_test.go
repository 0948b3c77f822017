//go:build linux

package registry

import (
	"context"
	"errors"
	"testing"
)

func TestExitWatch(t *testing.T) {
	c := startSleep(t)
	w, err := WatchExit(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if exited, err := w.Wait(ctx); exited || err != nil {
		t.Fatalf("Wait with a cancelled context = %v, %v; want false, nil", exited, err)
	}

	c.kill(t) // a zombie until reaped: exited all the same
	if exited, err := w.Wait(context.Background()); !exited || err != nil {
		t.Fatalf("Wait after SIGKILL = %v, %v; want true, nil", exited, err)
	}
	c.reap()
	if _, err := WatchExit(c.pid()); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("WatchExit of a reaped pid = %v, want ErrNoProcess", err)
	}
}
