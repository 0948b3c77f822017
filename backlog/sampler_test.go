package backlog

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type workersFunc func() bool

func (f workersFunc) AllBusy() bool { return f() }

// peakSeen is the peak of address i as the Reader's reads have left it,
// without a read of its own.
func (r *Reader) peakSeen(i int) uint32 {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	return r.peaks[i].note(int64(time.Since(r.start)/time.Second), 0)
}

// TestSamplerCatchesBurst: while every worker is busy the Sampler reads on
// its own, so a queue that forms and drains unseen by anyone else is in the
// peak.
func TestSamplerCatchesBurst(t *testing.T) {
	ln, path := listenUnixAccepting(t)
	r := newReader(t, "unix:"+path)
	s := NewSampler(r, nil)
	var busy atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(ctx, workersFunc(busy.Load)) })
	defer wg.Wait()
	defer cancel()

	busy.Store(true)
	s.Wake()
	dial(t, "unix", path, 3)
	deadline := time.Now().Add(settle)
	for r.peakSeen(0) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the sampler never saw the 3 waiting connections: peak %d", r.peakSeen(0))
		}
		time.Sleep(10 * time.Millisecond)
	}
	busy.Store(false)
	accept(t, ln, 3)
	if qs := readUntil(t, r, 0, 0); qs[0].Peak != 3 {
		t.Fatalf("after the burst: %+v, want a peak of 3", qs[0])
	}
}
