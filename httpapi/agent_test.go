package httpapi_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/registry"
)

func TestAgentReply(t *testing.T) {
	tests := []struct {
		name               string
		summary            registry.Summary
		required, expected int
		want               string
	}{
		{"draining with enough ready", registry.Summary{Ready: 4, Workers: 4, Draining: true}, 2, 4, "drain\n"},
		{"draining wins over too few ready", registry.Summary{Ready: 0, Workers: 0, Draining: true}, 2, 4, "drain\n"},
		{"none ready", registry.Summary{Ready: 0, Workers: 0}, 2, 4, "ready down #0/2 workers ready\n"},
		{"one below required", registry.Summary{Ready: 1, Workers: 3}, 2, 4, "ready down #1/2 workers ready\n"},
		{"exactly required", registry.Summary{Ready: 2, Workers: 2}, 2, 4, "ready up 50%\n"},
		{"weight three of four", registry.Summary{Ready: 3, Workers: 3}, 2, 4, "ready up 75%\n"},
		{"weight rounds down", registry.Summary{Ready: 2, Workers: 2}, 1, 3, "ready up 66%\n"},
		{"all expected ready", registry.Summary{Ready: 4, Workers: 4}, 2, 4, "ready up 100%\n"},
		{"capped at 100 above expect", registry.Summary{Ready: 9, Workers: 9}, 2, 4, "ready up 100%\n"},
		{"expect 0", registry.Summary{Ready: 3, Workers: 3}, 1, 0, "ready up 100%\n"},
		{"expect 0 and require 0", registry.Summary{}, 0, 0, "ready up 100%\n"},
		{"require 0 with none ready", registry.Summary{}, 0, 4, "ready up 0%\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.summary.Expected = tt.expected
			if got := httpapi.AgentReply(tt.summary, tt.required); got != tt.want {
				t.Fatalf("AgentReply(%+v, %d, %d) = %q, want %q", tt.summary, tt.required, tt.expected, got, tt.want)
			}
		})
	}
}

// agentLine connects to addr and reads everything the server sends until it
// closes the connection.
func agentLine(t *testing.T, addr string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(waitLimit))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read agent line: %q, %v", line, err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("agent connection after the line: %v (the server must close it)", err)
	}
	if len(rest) != 0 {
		t.Fatalf("agent sent %q after its line %q, want nothing", rest, line)
	}
	return line
}

func TestAgentOverTCP(t *testing.T) {
	reg := newRegistry(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- httpapi.NewAgent(ln, httpapi.AgentConfig{Source: expecting(reg, 4), Required: 2}).Serve(ctx)
	}()

	if got, want := agentLine(t, addr), "ready down #0/2 workers ready\n"; got != want {
		t.Fatalf("agent with no workers = %q, want %q", got, want)
	}
	readyWorkers(t, reg, 3)
	if got, want := agentLine(t, addr), "ready up 75%\n"; got != want {
		t.Fatalf("agent with 3 of 4 ready = %q, want %q", got, want)
	}
	// A client that connects and never reads does not hold up the next one.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := reg.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	if got, want := agentLine(t, addr), "drain\n"; got != want {
		t.Fatalf("agent while draining = %q, want %q", got, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Serve did not return after its context was cancelled")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("dial %s after Serve returned: connected, want refused", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s after Serve returned: %v, want connection refused", addr, err)
	}
}

func TestQueueWeight(t *testing.T) {
	listening := func(queued, limit uint32) backlog.Queue {
		return backlog.Queue{Addr: "127.0.0.1:8000", Listening: true, Queued: queued, Limit: limit}
	}
	aged := func(queued, limit uint32, oldest float64) backlog.Queue {
		q := listening(queued, limit)
		q.OldestSeconds = oldest
		return q
	}
	tests := []struct {
		name     string
		capacity int
		queues   []backlog.Queue
		floor    int
		want     int
	}{
		{"no queues", 100, nil, 10, 100},
		{"empty queue", 100, []backlog.Queue{listening(0, 128)}, 10, 100},
		{"quarter full", 100, []backlog.Queue{listening(32, 128)}, 10, 75},
		{"capacity scaled too", 50, []backlog.Queue{listening(64, 128)}, 10, 25},
		{"full queue stops at the floor", 100, []backlog.Queue{listening(128, 128)}, 10, 10},
		{"over full, the kernel's one extra", 100, []backlog.Queue{listening(129, 128)}, 10, 10},
		{"nearly full stops at the floor", 100, []backlog.Queue{listening(120, 128)}, 10, 10},
		{"the fullest queue counts", 100, []backlog.Queue{listening(0, 128), listening(64, 128)}, 10, 50},
		{"not listening is empty", 100, []backlog.Queue{{Addr: "127.0.0.1:1"}}, 10, 100},
		{"limit 0 and no age is empty", 100, []backlog.Queue{listening(5, 0)}, 10, 100},
		{"capacity below the floor stands", 5, []backlog.Queue{listening(128, 128)}, 10, 5},
		{"floor 0", 100, []backlog.Queue{listening(128, 128)}, 0, 0},
		{"a short queue that waits half a second", 100, []backlog.Queue{aged(2, 2048, 0.5)}, 10, 50},
		{"a waited second is a full queue", 100, []backlog.Queue{aged(2, 2048, 1)}, 10, 10},
		{"past a second it stays at the floor", 100, []backlog.Queue{aged(2, 2048, 7)}, 10, 10},
		{"the fuller of length and age counts", 100, []backlog.Queue{aged(96, 128, 0.1)}, 10, 25},
		{"age counts without a limit", 100, []backlog.Queue{aged(5, 0, 0.25)}, 10, 75},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := httpapi.QueueWeight(tt.capacity, tt.queues, tt.floor); got != tt.want {
				t.Fatalf("QueueWeight(%d, %+v, %d) = %d, want %d", tt.capacity, tt.queues, tt.floor, got, tt.want)
			}
		})
	}
}

// TestAgentClose: Close ends Serve, which returns nil, and may be called
// again.
func TestAgentClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := httpapi.NewAgent(ln, httpapi.AgentConfig{Source: expecting(newRegistry(t), 1), Required: 1})
	done := make(chan error, 1)
	go func() { done <- a.Serve(context.Background()) }()
	if got := agentLine(t, ln.Addr().String()); got != "ready down #0/1 workers ready\n" {
		t.Fatalf("agent line %q", got)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after Close = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}
