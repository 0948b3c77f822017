package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// agentWriteTimeout bounds writing one reply. A reply is one short line into
// a fresh socket's empty buffer, so only a broken peer ever meets it.
const agentWriteTimeout = time.Second

// AgentReply is the HAProxy agent-check line for s, in the grammar HAProxy
// 2.6 parses (see "agent-check" in HAProxy's configuration manual):
//
//	drain                               while the instance is drained, and
//	                                    while it reloads: no new sessions,
//	                                    but the server stays up
//	ready up 75%                        when ready >= required: the weight
//	                                    follows ready capacity, ready*100/expected
//	ready down #1/2 workers ready       when ready < required
//
// The weight is a bare percentage: HAProxy 2.6 ignores "weight:75%". "ready"
// leads every reply that is not a drain, because once a server has been told
// "drain" only a reply containing "ready" takes it out of DRAIN.
func AgentReply(s registry.Summary, required int) string {
	return agentReply(s, required, capacityWeight(s))
}

func capacityWeight(s registry.Summary) int {
	if s.Expected <= 0 {
		return 100
	}
	return min(100, s.Ready*100/s.Expected)
}

func agentReply(s registry.Summary, required, weight int) string {
	if s.Draining || s.Reload.Active {
		return "drain\n"
	}
	if ready := s.Counted(); ready < required {
		return "ready down #" + strconv.Itoa(ready) + "/" + strconv.Itoa(required) + " workers ready\n"
	}
	return "ready up " + strconv.Itoa(weight) + "%\n"
}

// QueueWeight scales a capacity weight (percent) down as the fullest of the
// application's listen queues fills, or as its oldest connection ages:
//
//	fill   = max(queued/limit, oldest/QueueAgeFull), at most 1
//	weight = capacity × (1 − fill), and never below min(capacity, floor)
//
// The age counts because a backlog is usually far longer than a server can
// serve quickly: with gunicorn's default of 2048, twenty requests waiting
// 5 s each fill 1% of the queue. HAProxy should hear about that wait, and
// the age says it whatever the backlog.
//
// A full queue, or one whose oldest connection has waited QueueAgeFull,
// brings the weight down to the floor, so HAProxy sends a drowning instance
// fewer new connections but never takes it out: that is the health check's
// call, and the health check never looks at the queue. An address with no
// listener counts as an empty queue; a limit of 0 (read from /proc) leaves
// the age alone to count.
func QueueWeight(capacity int, queues []backlog.Queue, floor int) int {
	fill := 0.0
	for _, q := range queues {
		if !q.Listening {
			continue
		}
		if q.Limit > 0 {
			fill = max(fill, float64(q.Queued)/float64(q.Limit))
		}
		fill = max(fill, q.OldestSeconds/QueueAgeFull.Seconds())
	}
	return max(int(float64(capacity)*(1-min(1, fill))), min(capacity, floor))
}

// QueueAgeFull is the wait in a listen queue that QueueWeight counts as a
// full queue. A second is long past what a web request should wait for a
// worker before a proxy would rather send it elsewhere, and short enough
// for the weight to move within one HAProxy agent interval (2 s by default).
const QueueAgeFull = time.Second

// IdleWeight scales a capacity weight (percent) down by the share of ready
// workers that are busy, those with at least one request in flight:
//
//	weight = capacity × (1 − busy/ready), and never below min(capacity, floor)
//
// So HAProxy sends new connections where workers are idle. As with
// QueueWeight, the floor keeps an instance whose every worker is busy in
// rotation: busy is not broken. busy is clamped to ready, and no ready
// worker leaves the capacity as it is.
func IdleWeight(capacity, ready, busy, floor int) int {
	if ready <= 0 {
		return capacity
	}
	busy = min(max(busy, 0), ready)
	return max(capacity*(ready-busy)/ready, min(capacity, floor))
}

// AgentConfig says what an Agent answers and how it weighs.
type AgentConfig struct {
	Source   Source
	Required int
	// Idle scales the weight with IdleWeight (--agent-weight=idle).
	Idle bool
	// Queues, when set, scales the weight with QueueWeight
	// (--agent-weight=queue), after Idle when both are set.
	Queues *backlog.Reader
	// Floor is the lowest weight in percent Idle and Queues bring.
	Floor int
	Log   *slog.Logger
}

// Agent answers HAProxy agent checks on one listener.
type Agent struct {
	AgentConfig
	ln net.Listener
	// acceptLog limits the accept failures a client can cause (by using up
	// notifyd's descriptors elsewhere) to a few lines a second.
	acceptLog *protocol.LogLimiter
}

// NewAgent returns an Agent that answers on ln as cfg says.
func NewAgent(ln net.Listener, cfg AgentConfig) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Agent{AgentConfig: cfg, ln: ln, acceptLog: protocol.NewLogLimiter(5, time.Second)}
}

// queueMaxAge bounds how old a listen-queue reading the agent may use.
const queueMaxAge = 100 * time.Millisecond

// Reply is the agent line for the registry's state now.
func (a *Agent) Reply() string {
	s := a.Source.Summary()
	weight := capacityWeight(s)
	if s.Draining || s.Reload.Active || s.Counted() < a.Required {
		return agentReply(s, a.Required, weight)
	}
	if a.Idle {
		weight = IdleWeight(weight, s.Ready, a.Source.Activity().BusyWorkers, a.Floor)
	}
	// The queue scales what the idle weight left. Its floor is then
	// min(idle weight, floor), which is min(capacity, floor) again, since
	// the idle weight never goes below that.
	if a.Queues != nil {
		if queues, err := a.Queues.Cached(queueMaxAge); err == nil {
			weight = QueueWeight(weight, queues, a.Floor)
		} else {
			a.Log.Debug("listen queues not read; weight without them", "error", err)
		}
	}
	return agentReply(s, a.Required, weight)
}

// Serve answers agent checks until ctx is cancelled or Close is called:
// each connection gets one Reply line and is closed. It returns nil then.
func (a *Agent) Serve(ctx context.Context) error {
	ln := a.ln
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors, or the like: wait and try again, as
			// net/http does, rather than end notifyd over one connection.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			a.acceptLog.Log(a.Log, slog.LevelWarn, "agent accept failed; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		conn.SetWriteDeadline(time.Now().Add(agentWriteTimeout))
		if _, err := conn.Write([]byte(a.Reply())); err != nil {
			a.Log.Debug("agent reply not written", "peer", conn.RemoteAddr().String(), "error", err)
		}
		conn.Close()
	}
}

// Close stops Serve and closes the listener. It is idempotent.
func (a *Agent) Close() error {
	if err := a.ln.Close(); !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
