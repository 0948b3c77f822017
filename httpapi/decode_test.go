package httpapi_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/httpapi"
)

// TestDecodeStatusReadsWhatStatusEncodes decodes what GET /status answers:
// the client and the server share one schema.
func TestDecodeStatusReadsWhatStatusEncodes(t *testing.T) {
	reg := newRegistry(t)
	workers := readyWorkers(t, reg, 2)
	url := serve(t, httpapi.Config{Registry: reg, Required: 2})
	got := do(t, "GET", url+"/status")
	a, err := httpapi.DecodeStatus([]byte(got.body))
	if err != nil {
		t.Fatalf("DecodeStatus(%q): %v", got.body, err)
	}
	if a.Ready != 2 || a.Required != 2 || !a.Healthy || len(a.Workers) != 2 {
		t.Fatalf("decoded %+v, want 2 of 2 ready and healthy", a.Status)
	}
	var pids []int
	for _, w := range a.Workers {
		pids = append(pids, w.PID)
		if w.State != "ready" || w.ReadyAt == nil {
			t.Fatalf("worker %+v, want ready with ready_at", w)
		}
	}
	slices.Sort(pids)
	want := []int{workers[0].Process.Pid, workers[1].Process.Pid}
	slices.Sort(want)
	if !slices.Equal(pids, want) {
		t.Fatalf("pids %v, want %v", pids, want)
	}
	if !a.Activity || !slices.Equal(a.WorkerActivity, []bool{true, true}) {
		t.Fatalf("activity %v %v: notifyd reports it for every worker", a.Activity, a.WorkerActivity)
	}
}

func TestDecodeStatusTellsLeftOutFieldsFromZeros(t *testing.T) {
	a, err := httpapi.DecodeStatus([]byte(`{"ready": 1, "required": 1, "expected": 1, "healthy": true,
		"workers": [{"pid": 7, "state": "ready"}, {"pid": 8, "state": "hung", "in_flight": 0, "requests": 0}],
		"listen_queues": [{"addr": "127.0.0.1:80", "listening": true}, {"addr": "unix:/a", "oldest_seconds": 0, "peak": 0, "drops": 0}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if a.Activity || !slices.Equal(a.WorkerActivity, []bool{false, true}) || !slices.Equal(a.QueueTime, []bool{false, true}) {
		t.Fatalf("Activity %v, WorkerActivity %v, QueueTime %v; want false, [false true], [false true]",
			a.Activity, a.WorkerActivity, a.QueueTime)
	}
}

func TestDecodeStatusRefusesOtherDocuments(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"not JSON", "hello", "invalid character 'h'"},
		{"an array", "[1, 2]", "a JSON array, not an object"},
		{"a wrong type", `{"ready": "yes"}`, "a JSON string as ready"},
		{"no healthy", `{"ready": 1, "required": 1, "expected": 1, "workers": []}`, "no ready, required, expected, healthy or workers field"},
		{"null workers", `{"ready": 1, "required": 1, "expected": 1, "healthy": true, "workers": null}`, "no ready, required, expected, healthy or workers field"},
		{"a worker without a pid", `{"ready": 1, "required": 1, "expected": 1, "healthy": true, "workers": [{"state": "ready"}]}`, "a worker without a pid or state"},
		{"a worker without a state", `{"ready": 1, "required": 1, "expected": 1, "healthy": true, "workers": [{"pid": 3}]}`, "a worker without a pid or state"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := httpapi.DecodeStatus([]byte(tc.body))
			if !errors.Is(err, httpapi.ErrNotStatus) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeStatus(%q) = %v, want ErrNotStatus saying %q", tc.body, err, tc.want)
			}
		})
	}
}
