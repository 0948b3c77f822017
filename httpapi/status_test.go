package httpapi_test

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/protocol"
)

var (
	statusKeys = []string{"busy_workers", "draining", "expected", "healthy", "in_flight", "listen_queues", "ready", "reload", "reloading", "required", "starting", "workers"}
	workerKeys = []string{"busy_seconds", "in_flight", "last_watchdog", "pid", "ready_at", "requests", "start_time", "state", "status"}
)

// getStatus fetches /status and decodes it, numbers kept exact.
func getStatus(t *testing.T, url string) map[string]any {
	t.Helper()
	got := do(t, "GET", url+"/status")
	if got.code != 200 {
		t.Fatalf("GET /status = %d %q, want 200", got.code, got.body)
	}
	if ct := got.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q, want application/json", ct)
	}
	if cc := got.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control = %q, want no-store", cc)
	}
	dec := json.NewDecoder(strings.NewReader(got.body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("decode /status %q: %v", got.body, err)
	}
	if keys := slices.Sorted(maps.Keys(doc)); !slices.Equal(keys, statusKeys) {
		t.Fatalf("/status keys = %v, want %v", keys, statusKeys)
	}
	return doc
}

// workersOf returns the workers array of a /status document, checking the
// key set of each.
func workersOf(t *testing.T, doc map[string]any) []map[string]any {
	t.Helper()
	list, ok := doc["workers"].([]any)
	if !ok {
		t.Fatalf("workers = %#v, want a JSON array", doc["workers"])
	}
	var out []map[string]any
	for i, w := range list {
		m, ok := w.(map[string]any)
		if !ok {
			t.Fatalf("workers[%d] = %#v, want an object", i, w)
		}
		if keys := slices.Sorted(maps.Keys(m)); !slices.Equal(keys, workerKeys) {
			t.Fatalf("workers[%d] keys = %v, want %v", i, keys, workerKeys)
		}
		out = append(out, m)
	}
	return out
}

func num(n int) json.Number     { return json.Number(strconv.Itoa(n)) }
func unum(n uint64) json.Number { return json.Number(strconv.FormatUint(n, 10)) }

func wantField(t *testing.T, m map[string]any, key string, want any) {
	t.Helper()
	if m[key] != want {
		t.Fatalf("%s = %#v, want %#v", key, m[key], want)
	}
}

// wantTimeBetween checks that v is an RFC 3339 string in UTC between lo and
// hi, as the registry stamps the time while applying a message.
func wantTimeBetween(t *testing.T, key string, v any, lo, hi time.Time) {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("%s = %#v, want an RFC 3339 string", key, v)
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("%s = %q: %v", key, s, err)
	}
	if !strings.HasSuffix(s, "Z") {
		t.Fatalf("%s = %q, want UTC", key, s)
	}
	if ts.Before(lo.Truncate(0)) || ts.After(hi.Truncate(0)) {
		t.Fatalf("%s = %s, want between %s and %s", key, s, lo.UTC().Format(time.RFC3339Nano), hi.UTC().Format(time.RFC3339Nano))
	}
}

func TestStatusEmpty(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 4), Required: 2})
	doc := getStatus(t, url)
	wantField(t, doc, "ready", num(0))
	wantField(t, doc, "required", num(2))
	wantField(t, doc, "expected", num(4))
	wantField(t, doc, "healthy", false)
	wantField(t, doc, "draining", false)
	if w := workersOf(t, doc); len(w) != 0 {
		t.Fatalf("workers = %v, want an empty array", w)
	}
}

func TestStatusReadyWorker(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 2), Required: 1})
	c := sleeper(t)
	pid := c.Process.Pid
	status := "serving on :8000"
	before := time.Now()
	send(t, reg, protocol.Message{Lifecycle: protocol.Ready, PID: pid, Status: &status})
	after := time.Now()

	doc := getStatus(t, url)
	wantField(t, doc, "ready", num(1))
	wantField(t, doc, "required", num(1))
	wantField(t, doc, "expected", num(2))
	wantField(t, doc, "healthy", true)
	wantField(t, doc, "draining", false)
	workers := workersOf(t, doc)
	if len(workers) != 1 {
		t.Fatalf("workers = %v, want one", workers)
	}
	w := workers[0]
	wantField(t, w, "pid", num(pid))
	wantField(t, w, "state", "ready")
	wantField(t, w, "status", status)
	wantField(t, w, "start_time", unum(startTime(t, pid)))
	wantField(t, w, "last_watchdog", nil)
	wantTimeBetween(t, "ready_at", w["ready_at"], before, after)
	readyAt := w["ready_at"]

	before = time.Now()
	send(t, reg, protocol.Message{PID: pid, Watchdog: true})
	after = time.Now()
	w = workersOf(t, getStatus(t, url))[0]
	wantTimeBetween(t, "last_watchdog", w["last_watchdog"], before, after)
	wantField(t, w, "ready_at", readyAt)
	wantField(t, w, "state", "ready")

	if err := reg.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	doc = getStatus(t, url)
	wantField(t, doc, "ready", num(1))
	wantField(t, doc, "healthy", false)
	wantField(t, doc, "draining", true)
}

func TestStatusStates(t *testing.T) {
	status := "warming up"
	tests := []struct {
		name     string
		messages []protocol.Message
		state    string
		ready    int
		readyAt  bool
	}{
		{"status only is starting", []protocol.Message{{Status: &status}}, "starting", 0, false},
		{"ready", []protocol.Message{{Lifecycle: protocol.Ready}}, "ready", 1, true},
		{"reloading after ready", []protocol.Message{{Lifecycle: protocol.Ready}, {Lifecycle: protocol.Reloading}}, "reloading", 0, true},
		{"ready again after reloading", []protocol.Message{{Lifecycle: protocol.Ready}, {Lifecycle: protocol.Reloading}, {Lifecycle: protocol.Ready}}, "ready", 1, true},
		{"failed by WATCHDOG=trigger", []protocol.Message{{Lifecycle: protocol.Ready}, {Failed: true}}, "failed", 0, true},
		{"failed by ERRNO", []protocol.Message{{Lifecycle: protocol.Ready}, {Failed: true, Errno: 5}}, "failed", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRegistry(t)
			url := serve(t, httpapi.Config{Registry: expecting(reg, 1), Required: 1})
			pid := sleeper(t).Process.Pid
			for _, m := range tt.messages {
				m.PID = pid
				send(t, reg, m)
			}
			doc := getStatus(t, url)
			wantField(t, doc, "ready", num(tt.ready))
			wantField(t, doc, "healthy", tt.ready == 1)
			workers := workersOf(t, doc)
			if len(workers) != 1 {
				t.Fatalf("workers = %v, want one", workers)
			}
			w := workers[0]
			wantField(t, w, "pid", num(pid))
			wantField(t, w, "state", tt.state)
			if _, isString := w["ready_at"].(string); isString != tt.readyAt {
				t.Fatalf("ready_at = %#v, want a time: %v", w["ready_at"], tt.readyAt)
			}
			wantField(t, w, "last_watchdog", nil)
		})
	}
}

func TestStatusListsWorkersByPid(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 3), Required: 1})
	cmds := readyWorkers(t, reg, 3)
	var want []int
	for _, c := range cmds {
		want = append(want, c.Process.Pid)
	}
	slices.Sort(want)
	var got []int
	for _, w := range workersOf(t, getStatus(t, url)) {
		pid, err := w["pid"].(json.Number).Int64()
		if err != nil {
			t.Fatalf("pid %v: %v", w["pid"], err)
		}
		got = append(got, int(pid))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("worker pids = %v, want %v in pid order", got, want)
	}
}
