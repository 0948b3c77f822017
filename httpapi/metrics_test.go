package httpapi_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/protocol"
)

// scrape fetches /metrics and parses the text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	got := do(t, "GET", url+"/metrics")
	if got.code != 200 {
		t.Fatalf("GET /metrics = %d %q, want 200", got.code, got.body)
	}
	if ct := got.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("Content-Type = %q, want the Prometheus text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(got.body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, got.body)
	}
	return fams
}

// sample returns the value of the one sample of name whose labels are
// exactly labels, given as name, value pairs.
func sample(t *testing.T, fams map[string]*dto.MetricFamily, typ dto.MetricType, name string, labels ...string) float64 {
	t.Helper()
	fam := fams[name]
	if fam == nil {
		t.Fatalf("metric %s is missing", name)
	}
	if fam.GetType() != typ {
		t.Fatalf("metric %s has type %v, want %v", name, fam.GetType(), typ)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			continue
		}
		switch typ {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		}
		t.Fatalf("metric %s: sample type %v not handled", name, typ)
	}
	t.Fatalf("metric %s has no sample with labels %v", name, want)
	return 0
}

func wantSample(t *testing.T, fams map[string]*dto.MetricFamily, typ dto.MetricType, want float64, name string, labels ...string) {
	t.Helper()
	if got := sample(t, fams, typ, name, labels...); got != want {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// counts is a MessageCounts func the test sets as it goes.
type counts struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counts) set(m map[string]uint64) {
	c.mu.Lock()
	c.m = m
	c.mu.Unlock()
}

func (c *counts) get() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

const (
	gauge   = dto.MetricType_GAUGE
	counter = dto.MetricType_COUNTER
)

// wantWorkers checks notifyd_workers for every state, each always present.
func wantWorkers(t *testing.T, fams map[string]*dto.MetricFamily, byState map[string]float64) {
	t.Helper()
	for _, st := range []string{"starting", "ready", "reloading", "hung", "failed"} {
		wantSample(t, fams, gauge, byState[st], "notifyd_workers", "state", st)
	}
	if n := len(fams["notifyd_workers"].GetMetric()); n != 5 {
		t.Fatalf("notifyd_workers has %d samples, want one for each of the 5 states", n)
	}
}

func TestMetricsValues(t *testing.T) {
	reg := newRegistry(t)
	msgs := &counts{}
	msgs.set(map[string]uint64{"accepted": 3, "barrier": 2, "bad_value": 1})
	url := serve(t, httpapi.Config{Registry: expecting(reg, 4), Required: 2, MessageCounts: msgs.get})

	fams := scrape(t, url)
	wantWorkers(t, fams, nil)
	wantSample(t, fams, gauge, 2, "notifyd_workers_required")
	wantSample(t, fams, gauge, 4, "notifyd_workers_expected")
	wantSample(t, fams, gauge, 0, "notifyd_healthy")
	wantSample(t, fams, gauge, 0, "notifyd_draining")
	wantSample(t, fams, counter, 0, "notifyd_worker_exits_total")
	wantSample(t, fams, counter, 0, "notifyd_state_file_errors_total")
	wantSample(t, fams, counter, 3, "notifyd_messages_total", "result", "accepted")
	wantSample(t, fams, counter, 2, "notifyd_messages_total", "result", "barrier")
	wantSample(t, fams, counter, 1, "notifyd_messages_total", "result", "bad_value")
	if n := len(fams["notifyd_messages_total"].GetMetric()); n != 3 {
		t.Fatalf("notifyd_messages_total has %d samples, want 3", n)
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if fams[name] == nil {
			t.Fatalf("metric %s is missing", name)
		}
	}

	cmds := readyWorkers(t, reg, 1)
	msgs.set(map[string]uint64{"accepted": 4, "barrier": 2, "bad_value": 1, "not_permitted": 1})
	fams = scrape(t, url)
	wantWorkers(t, fams, map[string]float64{"ready": 1})
	wantSample(t, fams, gauge, 0, "notifyd_healthy")
	wantSample(t, fams, counter, 4, "notifyd_messages_total", "result", "accepted")
	wantSample(t, fams, counter, 1, "notifyd_messages_total", "result", "not_permitted")

	second := sleeper(t)
	send(t, reg, protocol.Message{Lifecycle: protocol.Ready, PID: second.Process.Pid})
	fams = scrape(t, url)
	wantWorkers(t, fams, map[string]float64{"ready": 2})
	wantSample(t, fams, gauge, 1, "notifyd_healthy")
	wantSample(t, fams, gauge, 0, "notifyd_draining")

	if err := reg.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, url)
	wantSample(t, fams, gauge, 0, "notifyd_healthy")
	wantSample(t, fams, gauge, 1, "notifyd_draining")
	if err := reg.SetDraining(false); err != nil {
		t.Fatal(err)
	}

	send(t, reg, protocol.Message{Lifecycle: protocol.Reloading, PID: second.Process.Pid})
	fams = scrape(t, url)
	wantWorkers(t, fams, map[string]float64{"ready": 1, "reloading": 1})
	wantSample(t, fams, gauge, 0, "notifyd_healthy")

	// A registered worker killed without STOPPING=1 is an exit; a worker
	// that says STOPPING=1 first is not.
	send(t, reg, protocol.Message{Lifecycle: protocol.Stopping, PID: second.Process.Pid})
	cmds[0].Process.Kill()
	cmds[0].Wait()
	eventually(t, "notifyd_worker_exits_total 1", func() bool {
		return sample(t, scrape(t, url), counter, "notifyd_worker_exits_total") == 1
	})
	fams = scrape(t, url)
	wantWorkers(t, fams, nil)
	wantSample(t, fams, counter, 1, "notifyd_worker_exits_total")
	wantSample(t, fams, gauge, 0, "notifyd_healthy")
}

func TestMetricsExitsCountEachKilledWorker(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 3), Required: 1})
	cmds := readyWorkers(t, reg, 3)
	for i, c := range cmds {
		c.Process.Kill()
		c.Wait()
		want := float64(i + 1)
		eventually(t, fmt.Sprintf("notifyd_worker_exits_total %v", want), func() bool {
			return sample(t, scrape(t, url), counter, "notifyd_worker_exits_total") == want
		})
		wantWorkers(t, scrape(t, url), map[string]float64{"ready": float64(2 - i)})
	}
}

// Without message counts, the other counters are still there.
func TestMetricsWithoutMessageCounts(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 1), Required: 1})
	fams := scrape(t, url)
	wantSample(t, fams, counter, 0, "notifyd_worker_exits_total")
	wantSample(t, fams, counter, 0, "notifyd_state_file_errors_total")
	if fams["notifyd_messages_total"] != nil {
		t.Fatal("notifyd_messages_total is there without message counts")
	}
}
