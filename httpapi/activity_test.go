package httpapi_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/internal/proctest"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// report sends a worker's activity as the gunicorn module does.
func report(t *testing.T, reg *registry.Registry, w *exec.Cmd, inFlight uint32, requests, busyUSec uint64) {
	t.Helper()
	send(t, reg, protocol.Message{PID: w.Process.Pid, Activity: &protocol.Activity{InFlight: inFlight, Requests: requests, BusyUSec: busyUSec}})
}

// booted registers n ready workers whose first activity report, all zero,
// came with their READY=1, as the gunicorn module boots them.
func booted(t *testing.T, reg *registry.Registry, n int) []*exec.Cmd {
	t.Helper()
	ws := readyWorkers(t, reg, n)
	for _, w := range ws {
		report(t, reg, w, 0, 0, 0)
	}
	return ws
}

func TestStatusActivity(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 3), Required: 1})
	ws := booted(t, reg, 3)
	report(t, reg, ws[0], 1, 40, 6_250_000)
	report(t, reg, ws[1], 3, 2, 1_000_001)

	doc := getStatus(t, url)
	wantField(t, doc, "in_flight", num(4))
	wantField(t, doc, "busy_workers", num(2))
	want := map[int][3]string{
		ws[0].Process.Pid: {"1", "40", "6.25"},
		ws[1].Process.Pid: {"3", "2", "1.000001"},
		ws[2].Process.Pid: {"0", "0", "0"},
	}
	for _, w := range workersOf(t, doc) {
		pid, _ := w["pid"].(json.Number).Int64()
		v := want[int(pid)]
		wantField(t, w, "in_flight", json.Number(v[0]))
		wantField(t, w, "requests", json.Number(v[1]))
		wantField(t, w, "busy_seconds", json.Number(v[2]))
	}
	// Activity is information: the health answer stays as it was.
	wantField(t, doc, "ready", num(3))
	wantField(t, doc, "healthy", true)
}

func TestMetricsActivity(t *testing.T) {
	reg := newRegistry(t)
	url := serve(t, httpapi.Config{Registry: expecting(reg, 2), Required: 2})
	fams := scrape(t, url)
	for _, name := range []string{"notifyd_requests_in_flight", "notifyd_workers_busy"} {
		wantSample(t, fams, gauge, 0, name)
	}
	for _, name := range []string{"notifyd_requests_total", "notifyd_busy_seconds_total", "notifyd_activity_backwards_total"} {
		wantSample(t, fams, counter, 0, name)
	}

	ws := booted(t, reg, 2)
	report(t, reg, ws[0], 2, 40, 6_500_000)
	report(t, reg, ws[1], 0, 2, 500_000)
	report(t, reg, ws[1], 0, 1, 600_000) // backwards: ignored and counted
	fams = scrape(t, url)
	wantSample(t, fams, gauge, 2, "notifyd_requests_in_flight")
	wantSample(t, fams, gauge, 1, "notifyd_workers_busy")
	wantSample(t, fams, counter, 42, "notifyd_requests_total")
	wantSample(t, fams, counter, 7, "notifyd_busy_seconds_total")
	wantSample(t, fams, counter, 1, "notifyd_activity_backwards_total")
	wantSample(t, fams, gauge, 1, "notifyd_healthy")

	// The worker that leaves takes its requests in flight, not its counts.
	ws[0].Process.Kill()
	ws[0].Wait()
	eventually(t, "notifyd_requests_in_flight 0", func() bool {
		return sample(t, scrape(t, url), gauge, "notifyd_requests_in_flight") == 0
	})
	fams = scrape(t, url)
	wantSample(t, fams, gauge, 0, "notifyd_workers_busy")
	wantSample(t, fams, counter, 42, "notifyd_requests_total")
	wantSample(t, fams, counter, 7, "notifyd_busy_seconds_total")
}

func TestHealthVerboseActivity(t *testing.T) {
	reg := newRegistry(t)
	url := healthServer(t, reg)
	ws := booted(t, reg, 3)
	report(t, reg, ws[0], 1, 0, 0)
	report(t, reg, ws[2], 4, 0, 0)
	wantAnswer(t, do(t, "GET", url+"/?verbose"), 200,
		"[+]workers ok: 3/2 ready\n[+]capacity ok: 3/3 expected\n[+]activity ok: 2/3 workers busy, 5 requests in flight\nhealthz check passed\n")
	wantAnswer(t, do(t, "GET", url+"/"), 200, "3 workers ready\n")
}

func TestIdleWeight(t *testing.T) {
	tests := []struct {
		name                         string
		capacity, ready, busy, floor int
		want                         int
	}{
		{"all idle", 100, 4, 0, 10, 100},
		{"one of four busy", 100, 4, 1, 10, 75},
		{"three of four busy", 100, 4, 3, 10, 25},
		{"all busy stops at the floor", 100, 4, 4, 10, 10},
		{"capacity scaled too", 50, 2, 1, 10, 25},
		{"rounds down", 100, 3, 1, 10, 66},
		{"more busy than ready is all busy", 100, 2, 5, 10, 10},
		{"no ready worker leaves capacity", 0, 0, 0, 10, 0},
		{"capacity below the floor stands", 5, 1, 1, 10, 5},
		{"floor 0", 100, 2, 2, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := httpapi.IdleWeight(tt.capacity, tt.ready, tt.busy, tt.floor); got != tt.want {
				t.Fatalf("IdleWeight(%d, %d, %d, %d) = %d, want %d", tt.capacity, tt.ready, tt.busy, tt.floor, got, tt.want)
			}
		})
	}
}

// queueOf listens on a loopback port with the given backlog and leaves
// queued connections unaccepted in its queue, so that the kernel reports
// exactly queued/limit.
func queueOf(t *testing.T, limit, queued int) *backlog.Reader {
	t.Helper()
	addr := proctest.ListenTCP(t, netip.MustParseAddr("127.0.0.1"), limit, false).String()
	for range queued {
		c, err := net.DialTimeout("tcp", addr, waitLimit)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	a, err := backlog.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	r := backlog.NewReader([]backlog.Addr{a})
	eventually(t, fmt.Sprintf("%d connections queued on %s", queued, addr), func() bool {
		qs, err := r.Read()
		return err == nil && len(qs) == 1 && qs[0].Queued == uint32(queued)
	})
	return r
}

// TestAgentIdleWeight: with --agent-weight idle the weight follows the
// ready workers that have no request in flight, down to the floor; with
// queue too, the listen queue scales what is left.
func TestAgentIdleWeight(t *testing.T) {
	reg := newRegistry(t)
	log := slog.New(slog.DiscardHandler)
	idle := httpapi.NewAgent(nil, httpapi.AgentConfig{Source: expecting(reg, 4), Required: 2, Idle: true, Floor: 10, Log: log})
	both := httpapi.NewAgent(nil, httpapi.AgentConfig{Source: expecting(reg, 4), Required: 2, Idle: true, Floor: 10, Log: log, Queues: queueOf(t, 4, 2)})
	wantReply := func(a *httpapi.Agent, want string) {
		t.Helper()
		// A queue reading may be up to 100 ms old; this one never changes.
		if got := a.Reply(); got != want {
			t.Fatalf("Reply() = %q, want %q", got, want)
		}
	}

	wantReply(idle, "ready down #0/2 workers ready\n")
	ws := booted(t, reg, 4)
	wantReply(idle, "ready up 100%\n")
	wantReply(both, "ready up 50%\n")
	report(t, reg, ws[0], 1, 0, 0)
	wantReply(idle, "ready up 75%\n")
	report(t, reg, ws[1], 6, 0, 0)
	wantReply(idle, "ready up 50%\n")
	wantReply(both, "ready up 25%\n")
	report(t, reg, ws[2], 1, 0, 0)
	report(t, reg, ws[3], 1, 0, 0)
	wantReply(idle, "ready up 10%\n")
	wantReply(both, "ready up 10%\n")
	for _, w := range ws {
		report(t, reg, w, 0, 1, uint64(time.Second/time.Microsecond))
	}
	wantReply(idle, "ready up 100%\n")

	// Busy workers never take the instance down or out of a drain.
	report(t, reg, ws[0], 1, 1, 1_000_000)
	if err := reg.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	wantReply(idle, "drain\n")
}
