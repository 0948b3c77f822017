//go:build linux

package main

import (
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
)

func TestParseArgs(t *testing.T) {
	t.Setenv("NOTIFYD_SOCKET", "/run/env.sock")
	tests := []struct {
		name    string
		args    []string
		payload string
		socket  string
		block   bool
	}{
		{"ready", []string{"--ready", "--pid", "self"}, "READY=1\nPID={pid}", "/run/env.sock", true},
		{"status and a key", []string{"--pid", "self", "--status", "busy", "ERRNO=2"}, "STATUS=busy\nPID={pid}\nERRNO=2", "/run/env.sock", true},
		{"drain", []string{"--drain", "--socket", "/run/a.sock", "--no-block"}, "X_NOTIFYD_DRAIN=1", "/run/a.sock", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parseArgs(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.ReplaceAll(tc.payload, "{pid}", strconv.Itoa(os.Getpid()))
			if string(req.payload) != want || req.socket != tc.socket || req.block != tc.block {
				t.Fatalf("parseArgs(%q) = payload %q socket %q block %v, want %q, %q, %v",
					tc.args, req.payload, req.socket, req.block, want, tc.socket, tc.block)
			}
		})
	}
}

func TestParseArgsRefuses(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"nothing", []string{"--pid", "self"}, "nothing to send"},
		{"two lifecycles", []string{"--ready", "--stopping"}, "exclude each other"},
		{"drain with a worker", []string{"--drain", "--ready"}, "go alone"},
		{"not KEY=VALUE", []string{"--pid", "self", "hello"}, `argument "hello": want KEY=VALUE`},
		{"a barrier", []string{"--pid", "self", "BARRIER=1"}, "BARRIER=1 must come alone"},
		{"no timeout", []string{"--ready", "--pid", "self", "--timeout", "0s"}, "must be a positive duration"},
		{"an unknown flag", []string{"--readdy"}, "see notify --help"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseArgs(tc.args, io.Discard)
			var usage *usageError
			if !errors.As(err, &usage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseArgs(%q) = %v, want a usage error saying %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestDefaultURLFollowsBind(t *testing.T) {
	tests := []struct{ bind, want string }{
		{"", "http://" + httpapi.DefaultBind + "/"},
		{"0.0.0.0:9000", "http://127.0.0.1:9000/"},
		{"[::]:9000", "http://[::1]:9000/"},
		{"10.0.0.1:9000", "http://10.0.0.1:9000/"},
	}
	for _, tc := range tests {
		t.Setenv("NOTIFYD_BIND", tc.bind)
		if got := defaultURL(); got != tc.want {
			t.Errorf("NOTIFYD_BIND=%q: defaultURL() = %q, want %q", tc.bind, got, tc.want)
		}
	}
}

func TestStatusURL(t *testing.T) {
	for base, want := range map[string]string{
		"http://127.0.0.1:8001":         "http://127.0.0.1:8001/status",
		"http://127.0.0.1:8001/healthz": "http://127.0.0.1:8001/status",
		"http://lb/notifyd/":            "http://lb/notifyd/status",
	} {
		if got, err := statusURL("url", base); err != nil || got != want {
			t.Errorf("statusURL(%q) = %q, %v; want %q", base, got, err, want)
		}
	}
	if _, err := statusURL("url", "127.0.0.1:8001"); err == nil || !strings.Contains(err.Error(), "want notifyd's address as an http:// URL") {
		t.Errorf("statusURL without a scheme = %v, want a usage error", err)
	}
}

// decoded decodes a /status document as notify does.
func decoded(t *testing.T, body string) httpapi.StatusAnswer {
	t.Helper()
	a, err := httpapi.DecodeStatus([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestWriteStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	doc := decoded(t, `{"ready": 1, "required": 2, "expected": 2, "healthy": false, "draining": true, "starting": true,
		"workers": [{"pid": 12, "state": "ready", "ready_at": "2026-01-02T03:03:00Z", "status": "up\u0007"},
		            {"pid": 3456, "state": "starting", "status": ""}],
		"listen_queues": [{"addr": "127.0.0.1:80", "listening": true, "queued": 3, "limit": 10}]}`)
	var b strings.Builder
	if err := writeStatus(&b, doc, now, terminal{}); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"PID   STATE     READY FOR  STATUS\n" +
		"12    ready     1m05s      up?\n" +
		"3456  starting  -\n" +
		"unhealthy: 1 ready, 2 required, 2 expected, starting, draining\n" +
		"listen queue 127.0.0.1:80: 3 of 10 queued\n"
	if b.String() != want {
		t.Fatalf("writeStatus:\n%s\nwant\n%s", b.String(), want)
	}
}

func TestSummaryWrapsOnANarrowTerminal(t *testing.T) {
	doc := decoded(t, `{"ready": 10, "required": 10, "expected": 10, "healthy": true, "in_flight": 4, "busy_workers": 3, "workers": []}`)
	got := summary(doc, terminal{width: 40})
	want := "healthy: 10 ready, 10 required,\n  10 expected, not draining, 3 busy,\n  4 in flight\n"
	if got != want {
		t.Fatalf("summary = %q, want %q", got, want)
	}
}

func TestQueueTime(t *testing.T) {
	q := backlog.Queue{Addr: "unix:/run/a.sock", OldestSeconds: 1.25, Peak: 4, Drops: 9}
	if got := queueTime(q, true); got != ", oldest 1.2s, peak 4 in 60s" {
		t.Errorf("queueTime(unix) = %q: a Unix socket drops nothing", got)
	}
	q.Addr = "127.0.0.1:80"
	if got := queueTime(q, true); got != ", oldest 1.2s, peak 4 in 60s, 9 dropped" {
		t.Errorf("queueTime(tcp) = %q", got)
	}
	if got := queueTime(q, false); got != "" {
		t.Errorf("queueTime of a notifyd without queue time = %q, want nothing", got)
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                "0s",
		42 * time.Second:            "42s",
		187 * time.Second:           "3m07s",
		5*time.Hour + time.Minute*2: "5h02m",
		75 * time.Hour:              "3d03h",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestCountReadyAndTimedOut(t *testing.T) {
	began := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	doc := decoded(t, `{"ready": 3, "required": 2, "expected": 3, "healthy": true, "workers": [
		{"pid": 1, "state": "ready", "ready_at": "2026-01-02T02:59:59Z"},
		{"pid": 2, "state": "ready", "ready_at": "2026-01-02T03:00:01Z"},
		{"pid": 3, "state": "hung", "ready_at": "2026-01-02T03:00:02Z"},
		{"pid": 4, "state": "ready", "ready_at": "2026-01-02T03:00:03Z"}]}`)
	if n := countReady(doc, false, began); n != 3 {
		t.Errorf("countReady = %d, want the ready count 3", n)
	}
	if n := countReady(doc, true, began); n != 2 {
		t.Errorf("countReady fresh = %d, want 2: ready after the wait began", n)
	}
	tests := []struct {
		name    string
		answers int
		failed  error
		fresh   bool
		want    string
	}{
		{"never answered", 0, errors.New("connection refused"), false, "timed out after 1m0s: notifyd never answered: connection refused"},
		{"too few", 4, nil, false, "timed out after 1m0s: 3 of 5 workers ready"},
		{"too few fresh", 4, nil, true, "timed out after 1m0s: 2 of 5 workers ready (3 ready in all)"},
		{"then failed", 4, errors.New("refused"), false, "timed out after 1m0s: 3 of 5 workers ready when last answered, then: refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := timedOut(time.Minute, 5, "workers", doc, tc.answers, tc.failed, tc.fresh, began)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("timedOut = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSubcommandsRefuseArguments(t *testing.T) {
	for name, run := range map[string]func([]string, io.Writer) error{
		"notify check": runCheck, "notify status": runStatus, "notify wait": runWait,
	} {
		var usage *usageError
		err := run([]string{"--url", "http://127.0.0.1:1/", "extra"}, io.Discard)
		if !errors.As(err, &usage) || err.Error() != name+` takes no arguments, got "extra"` {
			t.Errorf("%s extra = %v, want a usage error naming the argument", name, err)
		}
		err = run([]string{"--nope"}, io.Discard)
		if !errors.As(err, &usage) || !strings.HasSuffix(err.Error(), "(see "+name+" --help)") {
			t.Errorf("%s --nope = %v, want a usage error pointing at --help", name, err)
		}
	}
}
