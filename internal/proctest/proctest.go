// Package proctest holds what notifyd's tests share: real processes to
// register, short directories for Unix socket paths, listeners whose queue
// nobody accepts from, and a bounded wait for an effect that happens
// asynchronously. Tests use real things; nothing here stands in for the
// kernel.
package proctest

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// Patience bounds every wait for an asynchronous effect. It only stops a
// broken test from hanging: no test asserts how long an effect took. A test
// waits for the effect, or for an event that proves the system has moved
// past it (a barrier acknowledgement, a log line, a counter); a time the
// product reports, such as a queue's age, is held between readings of the
// test's own clock taken around it. How long things take is for
// bench/report to measure.
const Patience = 20 * time.Second

// Eventually polls cond until it holds, and fails the test if it does not
// hold within Patience.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ShortDir makes a directory with a short path, so that Unix socket paths in
// it stay under the 108-byte sun_path limit, and removes it when the test
// ends.
func ShortDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "nd")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Sleeper starts a long sleep as a child of the test process: a live
// process to register. It is killed and reaped when the test ends.
func Sleeper(tb testing.TB) *exec.Cmd {
	tb.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}
