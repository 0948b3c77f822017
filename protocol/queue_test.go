package protocol

import (
	"os"
	"path/filepath"
	"testing"
)

// TestShortQueue reads queue lengths from files shaped like
// /proc/sys/net/unix/max_dgram_qlen: only a length below systemd's is short,
// and a file that cannot be read or parsed is not.
func TestShortQueue(t *testing.T) {
	tests := []struct {
		name    string
		content string // "" means no file
		n       int
		short   bool
	}{
		{"kernel default", "10\n", 10, true},
		{"just below systemd", "511\n", 511, true},
		{"systemd", "512\n", 512, false},
		{"larger", "4096\n", 4096, false},
		{"not a number", "ten\n", 0, false},
		{"no file", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "max_dgram_qlen")
			if tt.content != "" {
				if err := os.WriteFile(file, []byte(tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if n, short := shortQueue(file); n != tt.n || short != tt.short {
				t.Fatalf("shortQueue = %d, %v; want %d, %v", n, short, tt.n, tt.short)
			}
		})
	}
}
