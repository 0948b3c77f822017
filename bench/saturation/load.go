package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// sleeperTimeout bounds one /sleep request, queue time included. With the
// queue full it can wait for several other sleeps first.
const sleeperTimeout = 2 * time.Minute

// load keeps the application's workers busy: clients each looping on
// /sleep?s=N, sending the next request once the answer is in.
type load struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	completed atomic.Int64 // answered 200
	failed    atomic.Int64 // anything else, before stop
}

// startLoad starts clients looping on /sleep of the application at addr.
func startLoad(ctx context.Context, addr string, clients int, sleep time.Duration) *load {
	ctx, cancel := context.WithCancel(ctx)
	ld := &load{cancel: cancel}
	url := "http://" + addr + sleepPath(sleep)
	for range clients {
		c := &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true},
			Timeout:   sleeperTimeout,
		}
		ld.wg.Go(func() { ld.loop(ctx, c, url) })
	}
	return ld
}

func (ld *load) loop(ctx context.Context, c *http.Client, url string) {
	for ctx.Err() == nil {
		if ld.once(ctx, c, url) {
			ld.completed.Add(1)
			continue
		}
		if ctx.Err() == nil {
			ld.failed.Add(1)
			// Do not spin when the application refuses connections.
			benchkit.Pause(ctx, 100*time.Millisecond)
		}
	}
}

func (ld *load) once(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	return err == nil && resp.StatusCode == http.StatusOK
}

// sleepPath is the application's path that sleeps for d.
func sleepPath(d time.Duration) string {
	return "/sleep?s=" + strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// stop ends every client, dropping the requests in flight, and waits for
// them. It may be called more than once.
func (ld *load) stop() {
	ld.cancel()
	ld.wg.Wait()
}

// queueSampler reads the application's listen queue at a fixed interval
// until stopped.
type queueSampler struct {
	stopCh chan struct{}
	done   chan struct{}
	queued []uint32
	limit  uint32
	err    error // the first failed read
}

// queueSampleInterval is how often the sampler reads the queue: often enough
// to see it follow the sleeps, rare enough to cost nothing next to the probes.
const queueSampleInterval = 250 * time.Millisecond

func startQueueSampler(r *backlog.Reader) *queueSampler {
	qs := &queueSampler{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(qs.done)
		tick := time.NewTicker(queueSampleInterval)
		defer tick.Stop()
		for {
			q, err := readQueue(r)
			if err != nil && qs.err == nil {
				qs.err = err
			}
			if err == nil {
				qs.queued = append(qs.queued, q.Queued)
				qs.limit = q.Limit
			}
			select {
			case <-qs.stopCh:
				return
			case <-tick.C:
			}
		}
	}()
	return qs
}

// stop ends the sampling and returns the first failed read, if any.
func (qs *queueSampler) stop() error {
	close(qs.stopCh)
	<-qs.done
	return qs.err
}

// readQueue reads the one address r watches.
func readQueue(r *backlog.Reader) (backlog.Queue, error) {
	qs, err := r.Read()
	if err != nil {
		return backlog.Queue{}, fmt.Errorf("read the application's listen queue: %w", err)
	}
	if len(qs) != 1 || !qs[0].Listening {
		return backlog.Queue{}, fmt.Errorf("read the application's listen queue: nothing listens (%+v)", qs)
	}
	return qs[0], nil
}

// awaitQueue waits until the listen queue satisfies ok, for at most limit.
// what says what was awaited, for the error.
func awaitQueue(ctx context.Context, r *backlog.Reader, limit time.Duration, what string, ok func(backlog.Queue) bool) error {
	deadline := time.Now().Add(limit)
	for {
		q, err := readQueue(r)
		if err != nil {
			return err
		}
		if ok(q) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: the application's listen queue holds %d connections after %s", what, q.Queued, limit)
		}
		if err := benchkit.Pause(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}
