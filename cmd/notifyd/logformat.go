package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"
)

// The --log-format values.
const (
	logText     = "text"     // slog's own: time=… level=INFO msg=… key=value
	logGunicorn = "gunicorn" // [date] [pid] [INFO] notifyd: msg key=value
)

// gunicornTime is gunicorn's default datefmt for its error log,
// "[%Y-%m-%d %H:%M:%S %z]".
const gunicornTime = "[2006-01-02 15:04:05 -0700]"

// newLogHandler returns the handler of notifyd's log on w, in format.
func newLogHandler(w io.Writer, format string, level slog.Level) slog.Handler {
	if format == logGunicorn {
		return newGunicornHandler(w, level, os.Getpid())
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
}

// gunicornHandler writes each record as gunicorn writes a line of its error
// log, "%(asctime)s [%(process)d] [%(levelname)s] %(message)s", with
// notifyd's pid and the message marked "notifyd: ", so that in managed mode
// one file holds both in one format. The attributes follow the message as
// slog's text handler writes them, key=value.
type gunicornHandler struct {
	mu    *sync.Mutex   // held while attrs writes into buf
	out   io.Writer     // where whole lines go
	buf   *bytes.Buffer // the attributes of the record being written
	attrs slog.Handler  // a text handler on buf that leaves out time, level and message
	pid   int
}

func newGunicornHandler(w io.Writer, level slog.Level, pid int) *gunicornHandler {
	buf := new(bytes.Buffer)
	omitBuiltins := func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
			return slog.Attr{}
		}
		return a
	}
	return &gunicornHandler{
		mu:    new(sync.Mutex),
		out:   w,
		buf:   buf,
		attrs: slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: omitBuiltins}),
		pid:   pid,
	}
}

// Enabled reports whether level is at or above --log-level.
func (h *gunicornHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.attrs.Enabled(ctx, level)
}

// Handle writes r as one line.
func (h *gunicornHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.attrs.Handle(ctx, r); err != nil {
		return err
	}
	attrs := bytes.TrimSpace(h.buf.Bytes())
	at := r.Time
	if at.IsZero() {
		at = time.Now()
	}
	line := fmt.Appendf(nil, "%s [%d] [%s] notifyd: %s", at.Format(gunicornTime), h.pid, gunicornLevel(r.Level), r.Message)
	if len(attrs) > 0 {
		line = append(append(line, ' '), attrs...)
	}
	_, err := h.out.Write(append(line, '\n'))
	return err
}

// WithAttrs returns a handler that adds as to every line.
func (h *gunicornHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = h.attrs.WithAttrs(as)
	return &c
}

// WithGroup returns a handler that puts later attributes under name.
func (h *gunicornHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.attrs = h.attrs.WithGroup(name)
	return &c
}

// gunicornLevel names a level as Python's logging does.
func gunicornLevel(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "DEBUG"
	case l < slog.LevelWarn:
		return "INFO"
	case l < slog.LevelError:
		return "WARNING"
	default:
		return "ERROR"
	}
}

// counters returns counts as a group of key=value attributes in key order,
// so that a log line reads name.key=value, never a Go map.
func counters(name string, counts map[string]uint64) slog.Attr {
	attrs := make([]any, 0, len(counts))
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		attrs = append(attrs, slog.Uint64(k, counts[k]))
	}
	return slog.Group(name, attrs...)
}
