package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/registry"
)

// healthServer serves NewHealth over reg with --require 2 and --expect 3.
func healthServer(t *testing.T, reg *registry.Registry) string {
	t.Helper()
	srv := httptest.NewServer(httpapi.NewHealth(expecting(reg, 3), 2))
	t.Cleanup(srv.Close)
	return srv.URL
}

// wantAnswer checks the status, the exact body and the headers every health
// answer carries.
func wantAnswer(t *testing.T, got answer, code int, body string) {
	t.Helper()
	if got.code != code || got.body != body {
		t.Fatalf("answer = %d %q, want %d %q", got.code, got.body, code, body)
	}
	wantHeaders(t, got.header)
}

func wantHeaders(t *testing.T, h http.Header) {
	t.Helper()
	if got := h.Get("Content-Type"); got != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q, want %q", got, "text/plain; charset=utf-8")
	}
	if got := h.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q, want %q", got, "no-store")
	}
}

func TestHealthCountsAgainstRequired(t *testing.T) {
	tests := []struct {
		name  string
		ready int
		code  int
		body  string
	}{
		{"none ready", 0, 500, "0 workers ready\n"},
		{"one of two", 1, 500, "1 workers ready\n"},
		{"two of two", 2, 200, "2 workers ready\n"},
		{"three of two", 3, 200, "3 workers ready\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRegistry(t)
			readyWorkers(t, reg, tt.ready)
			url := healthServer(t, reg)
			got := do(t, "GET", url+"/")
			wantAnswer(t, got, tt.code, tt.body)
			if cl := got.header.Get("Content-Length"); cl != strconv.Itoa(len(tt.body)) {
				t.Fatalf("Content-Length = %q, want %d", cl, len(tt.body))
			}
		})
	}
}

func TestHealthFollowsWorkersAndDrain(t *testing.T) {
	reg := newRegistry(t)
	url := healthServer(t, reg)
	cmds := readyWorkers(t, reg, 2)
	wantAnswer(t, do(t, "GET", url+"/"), 200, "2 workers ready\n")

	if err := reg.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, do(t, "GET", url+"/"), 500, "2 workers ready, draining\n")

	if err := reg.SetDraining(false); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, do(t, "GET", url+"/"), 200, "2 workers ready\n")

	cmds[0].Process.Kill()
	cmds[0].Wait()
	eventually(t, "the killed worker to leave", func() bool { return reg.Summary().Ready == 1 })
	wantAnswer(t, do(t, "GET", url+"/"), 500, "1 workers ready\n")
}

func TestHealthHead(t *testing.T) {
	reg := newRegistry(t)
	url := healthServer(t, reg)
	readyWorkers(t, reg, 2)
	got := do(t, "HEAD", url+"/")
	wantAnswer(t, got, 200, "")
	if cl := got.header.Get("Content-Length"); cl != "16" {
		t.Fatalf("HEAD Content-Length = %q, want 16, the length of %q", cl, "2 workers ready\n")
	}

	if err := reg.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	got = do(t, "HEAD", url+"/")
	wantAnswer(t, got, 500, "")
	if cl := got.header.Get("Content-Length"); cl != "26" {
		t.Fatalf("HEAD Content-Length = %q, want 26, the length of %q", cl, "2 workers ready, draining\n")
	}
}

func TestHealthVerbose(t *testing.T) {
	tests := []struct {
		name     string
		ready    int
		draining bool
		query    string
		code     int
		body     string
	}{
		{"passing", 2, false, "?verbose", 200,
			"[+]workers ok: 2/2 ready\n[-]capacity failed: 2/3 expected (does not affect the status)\n[+]activity ok: 0/2 workers busy, 0 requests in flight\nhealthz check passed\n"},
		{"passing with a value", 2, false, "?verbose=1", 200,
			"[+]workers ok: 2/2 ready\n[-]capacity failed: 2/3 expected (does not affect the status)\n[+]activity ok: 0/2 workers busy, 0 requests in flight\nhealthz check passed\n"},
		{"passing among other parameters", 3, false, "?x=y&verbose", 200,
			"[+]workers ok: 3/2 ready\n[+]capacity ok: 3/3 expected\n[+]activity ok: 0/3 workers busy, 0 requests in flight\nhealthz check passed\n"},
		{"failing", 1, false, "?verbose", 500,
			"[-]workers failed: 1/2 ready\n[-]capacity failed: 1/3 expected (does not affect the status)\n[+]activity ok: 0/1 workers busy, 0 requests in flight\nhealthz check failed\n"},
		{"failing with none", 0, false, "?verbose", 500,
			"[-]workers failed: 0/2 ready\n[-]capacity failed: 0/3 expected (does not affect the status)\n[+]activity ok: 0/0 workers busy, 0 requests in flight\nhealthz check failed\n"},
		{"draining", 2, true, "?verbose", 500,
			"[+]workers ok: 2/2 ready\n[-]capacity failed: 2/3 expected (does not affect the status)\n[-]drain failed: draining; notify --undrain or SIGUSR2 ends it\n[+]activity ok: 0/2 workers busy, 0 requests in flight\nhealthz check failed\n"},
		{"draining and failing", 1, true, "?verbose", 500,
			"[-]workers failed: 1/2 ready\n[-]capacity failed: 1/3 expected (does not affect the status)\n[-]drain failed: draining; notify --undrain or SIGUSR2 ends it\n[+]activity ok: 0/1 workers busy, 0 requests in flight\nhealthz check failed\n"},
		{"another parameter is not verbose", 2, false, "?verbosity", 200, "2 workers ready\n"},
		{"empty query is not verbose", 2, false, "?", 200, "2 workers ready\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newRegistry(t)
			readyWorkers(t, reg, tt.ready)
			if err := reg.SetDraining(tt.draining); err != nil {
				t.Fatal(err)
			}
			url := healthServer(t, reg)
			wantAnswer(t, do(t, "GET", url+"/healthz"+tt.query), tt.code, tt.body)
		})
	}
}
