package httpapi_test

import (
	"strings"
	"testing"

	"github.com/notifyd/notifyd/httpapi"
)

func TestHandlerRouting(t *testing.T) {
	reg := newRegistry(t)
	readyWorkers(t, reg, 1)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 3), Required: 2})

	health := []struct{ method, path string }{
		{"GET", "/"},
		{"GET", "/healthz"},
		{"OPTIONS", "/"},
		{"POST", "/"},
		{"PUT", "/anything/at/all"},
		{"DELETE", "/"},
		{"PATCH", "/healthz"},
		{"GET", "/status/"},
		{"GET", "/Status"},
		{"GET", "/metrics/"},
	}
	for _, r := range health {
		t.Run(r.method+" "+r.path+" is the health check", func(t *testing.T) {
			wantAnswer(t, do(t, r.method, url+r.path), 500, "1 workers ready\n")
		})
	}

	for _, path := range []string{"/status", "/metrics"} {
		for _, method := range []string{"POST", "PUT", "DELETE", "OPTIONS", "PATCH"} {
			t.Run(method+" "+path+" is not allowed", func(t *testing.T) {
				got := do(t, method, url+path)
				want := path + " answers GET and HEAD only\n"
				if got.code != 405 || got.body != want {
					t.Fatalf("answer = %d %q, want 405 %q", got.code, got.body, want)
				}
				if allow := got.header.Get("Allow"); allow != "GET, HEAD" {
					t.Fatalf("Allow = %q, want %q", allow, "GET, HEAD")
				}
			})
		}
	}

	t.Run("HEAD /status has no body", func(t *testing.T) {
		got := do(t, "HEAD", url+"/status")
		if got.code != 200 || got.body != "" {
			t.Fatalf("answer = %d %q, want 200 and no body", got.code, got.body)
		}
		if ct := got.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type = %q, want application/json", ct)
		}
	})
	t.Run("HEAD /metrics has no body", func(t *testing.T) {
		got := do(t, "HEAD", url+"/metrics")
		if got.code != 200 || got.body != "" {
			t.Fatalf("answer = %d %q, want 200 and no body", got.code, got.body)
		}
		if ct := got.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Fatalf("Content-Type = %q, want the Prometheus text format", ct)
		}
	})
	t.Run("GET /status with a query is still status", func(t *testing.T) {
		got := do(t, "GET", url+"/status?verbose")
		if got.code != 200 || !strings.HasPrefix(got.body, "{") {
			t.Fatalf("answer = %d %q, want 200 and a JSON document", got.code, got.body)
		}
	})
}
