package main

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestGunicornHandlerWritesGunicornsFormat(t *testing.T) {
	at := time.Date(2026, 12, 3, 16, 54, 59, 0, time.FixedZone("", 3600))
	counts := map[string]uint64{"rejected": 1, "accepted": 10, "barrier": 9}
	tests := []struct {
		name  string
		level slog.Level
		log   func(*slog.Logger)
		want  string
	}{
		{"info with attributes", slog.LevelInfo,
			func(l *slog.Logger) { l.Info("notifyd started", "bind", "127.0.0.1:8001", "require", 2) },
			"[2026-12-03 16:54:59 +0100] [4242] [INFO] notifyd: notifyd started bind=127.0.0.1:8001 require=2\n"},
		{"no attributes", slog.LevelInfo,
			func(l *slog.Logger) { l.Info("state files in step with the registry again") },
			"[2026-12-03 16:54:59 +0100] [4242] [INFO] notifyd: state files in step with the registry again\n"},
		{"warning, quoted value", slog.LevelInfo,
			func(l *slog.Logger) { l.Warn("could not notify systemd", "error", "send: no such file") },
			"[2026-12-03 16:54:59 +0100] [4242] [WARNING] notifyd: could not notify systemd error=\"send: no such file\"\n"},
		{"error", slog.LevelInfo,
			func(l *slog.Logger) { l.Error("serve", "error", "boom") },
			"[2026-12-03 16:54:59 +0100] [4242] [ERROR] notifyd: serve error=boom\n"},
		{"debug shown at debug", slog.LevelDebug,
			func(l *slog.Logger) { l.Debug("worker left", "pid", 12, "reason", "exited") },
			"[2026-12-03 16:54:59 +0100] [4242] [DEBUG] notifyd: worker left pid=12 reason=exited\n"},
		{"debug left out at info", slog.LevelInfo,
			func(l *slog.Logger) { l.Debug("worker left", "pid", 12) },
			""},
		{"with attributes and a group", slog.LevelInfo,
			func(l *slog.Logger) { l.With("component", "registry").WithGroup("g").Info("recovered", "kept", 1) },
			"[2026-12-03 16:54:59 +0100] [4242] [INFO] notifyd: recovered component=registry g.kept=1\n"},
		{"counters as key=value pairs", slog.LevelInfo,
			func(l *slog.Logger) { l.Info("notifyd stopped", "ready", 0, counters("messages", counts)) },
			"[2026-12-03 16:54:59 +0100] [4242] [INFO] notifyd: notifyd stopped ready=0 messages.accepted=10 messages.barrier=9 messages.rejected=1\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			h := newGunicornHandler(&out, tt.level, 4242)
			tt.log(slog.New(fixedTime{h, at}))
			if got := out.String(); got != tt.want {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestTextFormatWritesCountersAsPairs(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(newLogHandler(&out, logText, slog.LevelInfo))
	log.Info("notifyd stopped", counters("messages", map[string]uint64{"barrier": 9, "accepted": 10}))
	line := out.String()
	if !regexp.MustCompile(`^time=\S+ level=INFO msg="notifyd stopped" messages.accepted=10 messages.barrier=9\n$`).MatchString(line) {
		t.Fatalf("text line %q", line)
	}
	if strings.Contains(line, "map[") {
		t.Fatalf("a Go map in %q", line)
	}
}

// fixedTime stamps every record with one time, so that lines can be
// compared whole.
type fixedTime struct {
	slog.Handler
	at time.Time
}

func (f fixedTime) Handle(ctx context.Context, r slog.Record) error {
	r.Time = f.at
	return f.Handler.Handle(ctx, r)
}

func (f fixedTime) WithAttrs(as []slog.Attr) slog.Handler {
	return fixedTime{f.Handler.WithAttrs(as), f.at}
}

func (f fixedTime) WithGroup(name string) slog.Handler {
	return fixedTime{f.Handler.WithGroup(name), f.at}
}
