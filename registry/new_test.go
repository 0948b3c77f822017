//go:build linux

package registry

import (
	"errors"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNewLeavesNothingBehindOnError makes New fail for want of a file
// descriptor, after its state directory checks have passed, and checks that
// it leaves no goroutine running.
func TestNewLeavesNothingBehindOnError(t *testing.T) {
	cfg := testConfig(t)
	// Warm up: the first New starts what the runtime keeps for good.
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()

	before := runtime.NumGoroutine()
	err = withNoFreeDescriptor(t, func() error {
		_, err := New(cfg)
		return err
	})
	if !errors.Is(err, unix.EMFILE) {
		t.Fatalf("New with no free descriptor = %v, want EMFILE", err)
	}
	eventually(t, "the goroutine count to come back to "+strconv.Itoa(before), func() bool {
		return runtime.NumGoroutine() <= before
	})
}

// withNoFreeDescriptor runs f with RLIMIT_NOFILE lowered to the lowest free
// descriptor number, so that any new descriptor f asks for is refused.
func withNoFreeDescriptor(t *testing.T, f func() error) error {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	free, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(free)
	low := lim
	low.Cur = uint64(free)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}()
	return f()
}
