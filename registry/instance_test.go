//go:build linux

package registry

import (
	"errors"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// reloadConfig is a registry that needs two workers, with main as the
// application's main process.
func reloadConfig(t *testing.T, main int, grace time.Duration) Config {
	cfg := testConfig(t)
	cfg.Required, cfg.Expected, cfg.MainPID, cfg.ReloadGrace = 2, 2, main, grace
	return cfg
}

func TestReloadKeepsTheStoppingGenerationsCount(t *testing.T) {
	main := startSleep(t)
	r := startRegistry(t, reloadConfig(t, main.pid(), time.Hour))
	old1, old2, new1, new2 := startSleep(t), startSleep(t), startSleep(t), startSleep(t)
	send(t, r, ready(old1.pid()), rootCreds())
	if s := r.Summary(); !s.Starting || s.Counted() != 1 {
		t.Fatalf("Summary() = %+v with 1 of 2 ready, want starting and 1 counted", s)
	}
	send(t, r, ready(old2.pid()), rootCreds())
	if s := r.Summary(); s.Starting || s.Reload.Active {
		t.Fatalf("Summary() = %+v with 2 of 2 ready, want started, no reload", s)
	}

	send(t, r, reloading(main.pid()), rootCreds())
	steps := []struct {
		name         string
		msg          protocol.Message
		ready, fresh int
		active       bool
	}{
		{"an old worker stops", stopping(old1.pid()), 1, 0, true},
		{"an old worker repeats READY=1", ready(old2.pid()), 1, 0, true},
		{"the other old worker stops", stopping(old2.pid()), 0, 0, true},
		{"one new worker is ready", ready(new1.pid()), 1, 1, true},
		{"the second new worker is ready", ready(new2.pid()), 2, 0, false},
	}
	for _, step := range steps {
		send(t, r, step.msg, rootCreds())
		s := r.Summary()
		if s.Ready != step.ready || s.Reload.Active != step.active || s.Reload.Fresh != step.fresh {
			t.Fatalf("%s: Summary() = %+v, want ready %d, reload active %v with %d fresh", step.name, s, step.ready, step.active, step.fresh)
		}
		if want := max(step.ready, 2); step.active && (s.Counted() != want || s.Reload.Kept != 2) {
			t.Fatalf("%s: Counted() = %d (kept %d), want %d", step.name, s.Counted(), s.Reload.Kept, want)
		}
	}
	if s := r.Summary(); s.Counted() != 2 || s.Reload != (Reload{}) {
		t.Fatalf("after the reload Summary() = %+v, want 2 counted and no reload", s)
	}
}

func TestReloadGraceEndsWithTheTruth(t *testing.T) {
	main := startSleep(t)
	r := startRegistry(t, reloadConfig(t, main.pid(), 50*time.Millisecond))
	w1, w2 := startSleep(t), startSleep(t)
	send(t, r, ready(w1.pid()), rootCreds())
	send(t, r, ready(w2.pid()), rootCreds())
	send(t, r, reloading(main.pid()), rootCreds())
	send(t, r, stopping(w1.pid()), rootCreds())
	send(t, r, stopping(w2.pid()), rootCreds())
	// Either the grace is still running, with the count kept, or it has
	// ended: never a reload that answers with the truth.
	if s := r.Summary(); s.Reload.Active && s.Counted() != 2 {
		t.Fatalf("during the grace Summary() = %+v, want 2 counted", s)
	}
	eventually(t, "the grace to end", func() bool { return !r.Summary().Reload.Active })
	if s := r.Summary(); s.Counted() != 0 || s.Ready != 0 {
		t.Fatalf("after the grace Summary() = %+v, want 0 counted", s)
	}
}

func TestInstanceMessagesNeedAnInstanceSender(t *testing.T) {
	main := startSleepAs(t, nobody, nobody)
	r := startRegistry(t, reloadConfig(t, main.pid(), time.Hour))
	nobodyCreds := protocol.Credentials{PID: main.pid(), UID: nobody, GID: nobody}
	four := 4
	for name, m := range map[string]protocol.Message{
		"reload":  {Lifecycle: protocol.Reloading},
		"expect4": {Expect: &four},
	} {
		err := r.HandleMessage(m, nobodyCreds)
		if !errors.Is(err, ErrNotPermitted) {
			t.Fatalf("%s from uid %d: error %v, want ErrNotPermitted", name, nobody, err)
		}
	}
	if s := r.Summary(); s.Reload.Active || s.Expected != 2 {
		t.Fatalf("Summary() = %+v after rejected messages, want no reload and 2 expected", s)
	}
	send(t, r, protocol.Message{Expect: &four}, rootCreds())
	send(t, r, reloading(main.pid()), rootCreds())
	if s := r.Summary(); !s.Reload.Active || s.Expected != 4 {
		t.Fatalf("Summary() = %+v from root, want a reload and 4 expected", s)
	}
	if got := len(r.Workers()); got != 0 {
		t.Fatalf("the main process registered as a worker: %+v", r.Workers())
	}
}

// TestWhoIsTheMainProcess: without --main-pid, a process that reloads
// itself and is not a worker is the main process; a worker that reloads,
// and a RELOADING=1 about another process, are worker messages as before.
func TestWhoIsTheMainProcess(t *testing.T) {
	cfg := reloadConfig(t, 0, time.Hour)
	r := startRegistry(t, cfg)
	worker, other, main := startSleep(t), startSleep(t), startSleep(t)
	send(t, r, ready(worker.pid()), rootCreds())
	send(t, r, protocol.Message{Lifecycle: protocol.Reloading}, protocol.Credentials{PID: worker.pid()})
	send(t, r, reloading(other.pid()), rootCreds())
	if s := r.Summary(); s.Starting {
		t.Fatalf("Summary() = %+v without a main pid, want not starting", s)
	}
	if s := r.Summary(); s.Reload.Active || s.Workers != 2 {
		t.Fatalf("Summary() = %+v, want two reloading workers and no instance reload", s)
	}
	send(t, r, protocol.Message{Lifecycle: protocol.Reloading}, protocol.Credentials{PID: main.pid()})
	if s := r.Summary(); !s.Reload.Active || s.Workers != 2 {
		t.Fatalf("Summary() = %+v, want an instance reload and still two workers", s)
	}
}

// TestRecoveredWorkersAreNoStart: a notifyd that recovers live workers from
// their state files restarted, while the instance kept running.
func TestRecoveredWorkersAreNoStart(t *testing.T) {
	cfg := reloadConfig(t, startSleep(t).pid(), time.Hour)
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Summary().Starting {
		t.Fatalf("a fresh registry's Summary() = %+v, want starting", first.Summary())
	}
	w := startSleep(t)
	send(t, first, ready(w.pid()), rootCreds())
	first.Close()
	again := startRegistry(t, cfg)
	if s := again.Summary(); s.Starting || s.Ready != 1 {
		t.Fatalf("after recovering one worker Summary() = %+v, want 1 ready and not starting", s)
	}
}
