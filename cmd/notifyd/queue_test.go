package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoteQueueLength reads queue lengths from files shaped like
// /proc/sys/net/unix/max_dgram_qlen: only a length below systemd's is noted,
// with its value, and a file that cannot be read or parsed notes nothing.
func TestNoteQueueLength(t *testing.T) {
	tests := []struct {
		name     string
		content  string // "" means no file
		wantNote string // "" means no note
	}{
		{name: "kernel default", content: "10\n", wantNote: "net.unix.max_dgram_qlen=10 "},
		{name: "just below systemd", content: "511\n", wantNote: "net.unix.max_dgram_qlen=511 "},
		{name: "systemd", content: "512\n"},
		{name: "larger", content: "4096\n"},
		{name: "not a number", content: "ten\n"},
		{name: "no file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "max_dgram_qlen")
			if tt.content != "" {
				if err := os.WriteFile(file, []byte(tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			noteQueueLength(slog.New(slog.NewTextHandler(&out, nil)), file)
			switch got := out.String(); {
			case tt.wantNote == "" && got != "":
				t.Fatalf("logged %q, want nothing", got)
			case tt.wantNote != "" && !strings.Contains(got, tt.wantNote):
				t.Fatalf("logged %q, want a line with %q", got, tt.wantNote)
			}
		})
	}
}
