package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/notifyd/notifyd/registry"
)

// agentWriteTimeout bounds writing one reply. A reply is one short line into
// a fresh socket's empty buffer, so only a broken peer ever meets it.
const agentWriteTimeout = time.Second

// AgentReply is the HAProxy agent-check line for s, in the grammar HAProxy
// 2.6 parses (see "agent-check" in HAProxy's configuration manual):
//
//	drain                               while the instance is drained
//	ready up 75%                        when ready >= required: the weight
//	                                    follows ready capacity, ready*100/expected
//	ready down #1/2 workers ready       when ready < required
//
// The weight is a bare percentage: HAProxy 2.6 ignores "weight:75%". "ready"
// leads every reply that is not a drain, because once a server has been told
// "drain" only a reply containing "ready" takes it out of DRAIN.
func AgentReply(s registry.Summary, required, expected int) string {
	if s.Draining {
		return "drain\n"
	}
	if s.Ready < required {
		return "ready down #" + strconv.Itoa(s.Ready) + "/" + strconv.Itoa(required) + " workers ready\n"
	}
	weight := 100
	if expected > 0 {
		weight = min(100, s.Ready*100/expected)
	}
	return "ready up " + strconv.Itoa(weight) + "%\n"
}

// ServeAgent answers HAProxy agent checks on ln until ctx is cancelled: each
// connection gets one AgentReply line and is closed.
func ServeAgent(ctx context.Context, ln net.Listener, src Source, required, expected int, log *slog.Logger) error {
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
			log.Warn("agent accept failed; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		conn.SetWriteDeadline(time.Now().Add(agentWriteTimeout))
		if _, err := conn.Write([]byte(AgentReply(src.Summary(), required, expected))); err != nil {
			log.Debug("agent reply not written", "peer", conn.RemoteAddr().String(), "error", err)
		}
		conn.Close()
	}
}
