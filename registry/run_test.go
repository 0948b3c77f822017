//go:build linux

package registry

import (
	"context"
	"slices"
	"testing"
	"time"
)

// runCall is one call of Run in its own goroutine.
type runCall struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // what Run returned, once done is closed
}

// goRun calls r.Run in a goroutine with a context of its own. When the test
// ends the context is cancelled and the goroutine waited for.
func goRun(t *testing.T, r *Registry) *runCall {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &runCall{cancel: cancel, done: make(chan struct{})}
	go func() {
		c.err = r.Run(ctx)
		close(c.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(waitFor):
			t.Errorf("gave up waiting for Run to return after its context was cancelled")
		}
	})
	return c
}

// returned reports whether Run has returned, without waiting for it.
func (c *runCall) returned() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop cancels the context of the call and returns what Run returned.
func (c *runCall) stop(t *testing.T) error {
	t.Helper()
	c.cancel()
	select {
	case <-c.done:
		return c.err
	case <-time.After(waitFor):
		t.Fatalf("gave up waiting for Run to return after its context was cancelled")
		return nil
	}
}

// TestRunAgainAfterCancel checks that a registry whose Run was cancelled can
// run again: the second Run sees exits, and returns only when its own
// context is cancelled.
func TestRunAgainAfterCancel(t *testing.T) {
	for _, detection := range []Detection{Pidfd, Sweep} {
		t.Run(detection.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection = detection
			if detection == Sweep {
				cfg.ReapInterval = 20 * time.Millisecond
			}
			r, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			// Registered first, so that it runs after every Run returned.
			t.Cleanup(func() {
				if err := r.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			victim, survivor := startSleep(t), startSleep(t)

			first := goRun(t, r)
			send(t, r, ready(victim.pid()), rootCreds())
			send(t, r, ready(survivor.pid()), rootCreds())
			if err := first.stop(t); err != nil {
				t.Fatalf("first Run: %v, want nil", err)
			}
			wantSummary(t, r, Summary{Ready: 2, Workers: 2})

			second := goRun(t, r)
			victim.killAndReap(t)
			eventually(t, "the second Run to drop the killed worker", func() bool {
				if second.returned() {
					t.Fatalf("second Run returned %v before its context was cancelled", second.err)
				}
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
			if second.returned() {
				t.Fatalf("second Run returned %v before its context was cancelled", second.err)
			}
			if err := second.stop(t); err != nil {
				t.Fatalf("second Run: %v, want nil", err)
			}
		})
	}
}
