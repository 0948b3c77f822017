package e2e

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNotifyTimeoutsAreDeadlines points notify wait, check and status at a
// server that accepts connections and never answers: each gives up by
// itself, with exit status 1 and its deadline as the reason. The test's own
// deadline only tells a hang from an answer; it is the timeout with room
// for a loaded machine, and times nothing.
func TestNotifyTimeoutsAreDeadlines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn // accepted, never answered, never closed
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	url := "http://" + ln.Addr().String() + "/"
	for _, tt := range []struct {
		name    string
		args    []string
		timeout time.Duration
	}{
		{"wait", []string{"wait", "--ready", "1", "--timeout", "1s", "--url", url}, time.Second},
		{"check", []string{"check", "--timeout", "1s", "--url", url}, time.Second},
		{"status", []string{"status", "--url", url}, 5 * time.Second}, // its fixed ask timeout
	} {
		t.Run(tt.name, func(t *testing.T) {
			hang := tt.timeout + 15*time.Second
			ctx, cancel := context.WithTimeout(context.Background(), hang)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(bin, "notify"), tt.args...)
			code, out := exitCode(t, cmd)
			if ctx.Err() != nil {
				t.Fatalf("notify %s still ran %s after it began; output %q", tt.name, hang, out)
			}
			if code != 1 || !strings.HasPrefix(out, "notify: ") || !strings.Contains(out, "Client.Timeout exceeded") {
				t.Fatalf("notify %s: exit %d, output %q; want 1 and its timeout as the reason", tt.name, code, out)
			}
		})
	}
}
