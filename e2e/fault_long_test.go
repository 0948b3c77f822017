package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestFaultSoak runs worker churn and a steady health load against one
// notifyd, built without the race detector, for as long as -soak says,
// under -long only. It samples notifyd's resident memory and descriptors
// every 10 s, and once the churn has quiesced and every worker is gone it
// checks that notifyd holds the descriptors and goroutines it started with,
// and not much more memory than after warm-up.
func TestFaultSoak(t *testing.T) {
	if !*long {
		t.Skip("the soak runs with -long; -soak sets its length")
	}
	const (
		sampleEvery = 10 * time.Second
		// rssGrowth is how much more notifyd may hold resident once
		// quiesced than after warm-up. The plain build measured 30 MiB
		// after warm-up and within 1 MiB of that at the end of 1 and 10
		// minute soaks, while its heap in use swung between 4 and 15 MiB
		// from one collection to the next (GOGC=400). The margin is a
		// little more than that swing, so that a collection at an unlucky
		// moment does not fail the test, while keeping 140 bytes of each
		// of the 128,000 health requests, or 800 bytes of each of the
		// 22,000 workers, of a 10 minute soak would pass it.
		rssGrowth = 16 << 10 // KiB
	)
	warmUp := min(*soak/10, time.Minute)
	d := startPlainNotifyd(t, shortDir(t))
	pid := d.cmd.Process.Pid
	base := fdCount(t, pid)
	goroutines := int(metricSamples(t, d)["go_goroutines"])
	closeIdleHTTP()
	waitFDCount(t, pid, base)

	c := startChurn(t, d.socket, 2, 20*time.Millisecond)
	var (
		done     = make(chan struct{})
		wg       sync.WaitGroup
		errs     errorList
		mu       sync.Mutex
		requests []time.Duration
	)
	stop := sync.OnceFunc(func() { close(done); wg.Wait() })
	t.Cleanup(stop)
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				case <-time.After(5 * time.Millisecond):
				}
				start := time.Now()
				h, err := fetchHealth(d)
				took := time.Since(start)
				if _, err := checkHealthAnswer(h, err, 1); err != nil {
					errs.add(err)
				}
				mu.Lock()
				requests = append(requests, took)
				mu.Unlock()
				if i%100 == 0 {
					for _, path := range []string{"/status", "/metrics"} {
						resp, err := client.Get("http://" + d.addr + path)
						if err != nil {
							errs.add(err)
							continue
						}
						resp.Body.Close()
						if resp.StatusCode != 200 {
							errs.add(fmt.Errorf("GET %s = %d", path, resp.StatusCode))
						}
					}
				}
			}
		})
	}

	start := time.Now()
	warmRSS := 0
	sample := func(what string) int {
		t.Helper()
		kib, err := rssKiB(pid)
		if err != nil {
			t.Fatal(err)
		}
		m := metricSamples(t, d)
		t.Logf("%-9s %6s: VmRSS %6d KiB, heap in use %6d KiB, %4d descriptors, %4d goroutines, %3d workers ready",
			what, time.Since(start).Round(time.Second), kib, int(m["go_memstats_heap_inuse_bytes"])>>10,
			fdCount(t, pid), int(m["go_goroutines"]), int(m[`notifyd_workers{state="ready"}`]))
		return kib
	}
	for next := start.Add(sampleEvery); time.Since(start) < *soak; next = next.Add(sampleEvery) {
		time.Sleep(min(time.Until(next), time.Until(start.Add(*soak))))
		what := "soak"
		if warmRSS == 0 && time.Since(start) >= warmUp {
			what = "warmed up"
			warmRSS = sample(what)
			continue
		}
		sample(what)
	}
	if warmRSS == 0 {
		t.Fatalf("-soak %s is too short to warm up for %s", *soak, warmUp)
	}

	c.killAll()
	stop()
	c.errs.report(t, "churn")
	errs.report(t, "health load")
	readies := 0
	for _, w := range c.workers {
		if w.ready.err != nil || w.stopping.err != nil {
			t.Errorf("worker %d: a message failed while notifyd ran: %v %v", w.pid, w.ready.err, w.stopping.err)
		}
		if w.ready.sent {
			readies++
		}
	}
	mu.Lock()
	t.Logf("%d workers, %d registrations; health load %s", len(c.workers), readies, latencies(requests))
	mu.Unlock()

	waitHealth(t, d, 500, "0 workers ready\n")
	closeIdleHTTP()
	waitFDCount(t, pid, base)
	waitFor(t, fmt.Sprintf("notifyd's goroutines to come back to %d", goroutines), func() bool {
		closeIdleHTTP()
		return int(metricSamples(t, d)["go_goroutines"]) <= goroutines
	})
	endRSS := sample("quiesced")
	if endRSS > warmRSS+rssGrowth {
		t.Fatalf("notifyd's VmRSS %d KiB once quiesced, %d KiB after warm-up: more than %d KiB of growth", endRSS, warmRSS, rssGrowth)
	}
}
