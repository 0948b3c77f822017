//go:build linux

package registry

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestNewRejectsBadFilename(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
	}{
		{name: "no placeholder", pattern: "worker"},
		{name: "empty", pattern: ""},
		{name: "two placeholders", pattern: "a{}b{}"},
		{name: "adjacent placeholders", pattern: "{}{}"},
		{name: "directory", pattern: "x/{}"},
		{name: "absolute path", pattern: "/tmp/{}"},
		{name: "stray open brace", pattern: "w{-{}"},
		{name: "stray close brace", pattern: "{}}"},
		{name: "NUL byte", pattern: "w\x00{}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			r, err := New(Config{Dir: dir, Filename: tt.pattern})
			if err == nil {
				r.Close()
				t.Fatalf("New with Filename %q succeeded, want an error", tt.pattern)
			}
			if !strings.Contains(err.Error(), `"`+strings.ReplaceAll(tt.pattern, "\x00", `\x00`)+`"`) {
				t.Errorf("error %q does not quote the pattern %q", err, tt.pattern)
			}
			if exists(dir) {
				t.Errorf("New created %s although the configuration was refused", dir)
			}
			if err := ValidateFilename(tt.pattern); err == nil {
				t.Errorf("ValidateFilename(%q) = nil, want an error", tt.pattern)
			}
		})
	}
}

// TestFilenameEndingInTmpIsRefused checks a pattern whose state files would
// end in ".tmp", the suffix of a file being written: recovery would take
// every such state file for one left half-written and delete it.
func TestFilenameEndingInTmpIsRefused(t *testing.T) {
	for _, pattern := range []string{".w.{}.tmp", "{}.tmp"} {
		t.Run(pattern, func(t *testing.T) {
			verr := ValidateFilename(pattern)
			if verr == nil {
				t.Fatalf("ValidateFilename(%q) = nil, want an error", pattern)
			}
			if !strings.Contains(verr.Error(), ".tmp") {
				t.Fatalf("ValidateFilename(%q) = %q, want an error mentioning .tmp", pattern, verr)
			}
			dir := filepath.Join(t.TempDir(), "state")
			r, err := New(Config{Dir: dir, Filename: pattern})
			if err == nil {
				r.Close()
				t.Fatalf("New with Filename %q succeeded, want an error", pattern)
			}
			if !strings.Contains(err.Error(), verr.Error()) {
				t.Fatalf("New with Filename %q: %q, want an error saying %q", pattern, err, verr)
			}
			if exists(dir) {
				t.Fatalf("New created %s although the configuration was refused", dir)
			}
		})
	}
}

func TestValidateFilenameAccepts(t *testing.T) {
	for _, pattern := range []string{"{}", ".gunicorn.worker.{}", "w-{}.state", "{}.pid", "worker {} state"} {
		t.Run(pattern, func(t *testing.T) {
			if err := ValidateFilename(pattern); err != nil {
				t.Fatalf("ValidateFilename(%q) = %v, want nil", pattern, err)
			}
			r, err := New(Config{Dir: t.TempDir(), Filename: pattern})
			if err != nil {
				t.Fatalf("New with Filename %q: %v", pattern, err)
			}
			r.Close()
		})
	}
}

func TestNewStateDirectory(t *testing.T) {
	umask := syscall.Umask(0)
	syscall.Umask(umask)
	tests := []struct {
		name string
		// setup returns the Dir to configure.
		setup    func(t *testing.T) string
		wantErr  string // a part of the error; "" when New must succeed
		wantMode fs.FileMode
	}{
		{
			name:     "private directory",
			setup:    func(t *testing.T) string { return dirWithMode(t, 0o700) },
			wantMode: fs.ModeDir | 0o700,
		},
		{
			name:    "world-writable without sticky bit",
			setup:   func(t *testing.T) string { return dirWithMode(t, 0o777) },
			wantErr: "world-writable without the sticky bit",
		},
		{
			name:    "other-writable only",
			setup:   func(t *testing.T) string { return dirWithMode(t, 0o702) },
			wantErr: "world-writable without the sticky bit",
		},
		{
			name:     "world-writable with sticky bit",
			setup:    func(t *testing.T) string { return dirWithMode(t, 0o777|fs.ModeSticky) },
			wantMode: fs.ModeDir | fs.ModeSticky | 0o777,
		},
		{
			name:     "group-writable",
			setup:    func(t *testing.T) string { return dirWithMode(t, 0o770) },
			wantMode: fs.ModeDir | 0o770,
		},
		{
			name:     "missing directory is created",
			setup:    func(t *testing.T) string { return filepath.Join(t.TempDir(), "run", "notifyd") },
			wantMode: fs.ModeDir | (0o755 &^ fs.FileMode(umask)),
		},
		{
			name: "regular file",
			setup: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "file")
				writeFile(t, path, "")
				return path
			},
			wantErr: "is not a directory",
		},
		{
			name: "below a regular file",
			setup: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "file")
				writeFile(t, path, "")
				return filepath.Join(path, "dir")
			},
			wantErr: "not a directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t)
			r, err := New(Config{Dir: dir, Filename: defaultPattern})
			if tt.wantErr != "" {
				if err == nil {
					r.Close()
					t.Fatalf("New with Dir %s succeeded, want an error", dir)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New: %v, want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New with Dir %s: %v", dir, err)
			}
			defer r.Close()
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tt.wantMode {
				t.Fatalf("directory mode = %v, want %v", fi.Mode(), tt.wantMode)
			}
			if got := dirNames(t, dir); len(got) != 0 {
				t.Fatalf("New left %q in the directory, want nothing", got)
			}
			wantSummary(t, r, Summary{})
		})
	}
}

// dirWithMode returns a new directory with exactly mode, whatever the umask.
func dirWithMode(t *testing.T, mode fs.FileMode) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCloseIsIdempotent(t *testing.T) {
	for _, detection := range []Detection{Auto, Pidfd, Sweep} {
		t.Run(detection.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection = detection
			r, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			c := startSleep(t)
			send(t, r, ready(c.pid()), rootCreds())
			for i := range 2 {
				if err := r.Close(); err != nil {
					t.Fatalf("Close #%d: %v", i+1, err)
				}
			}
			// Close keeps the state files for the next start.
			if got := savedNames(t, r); len(got) != 1 || got[0] != stateName(c.pid()) {
				t.Fatalf("state directory holds %q after Close, want only %q", got, stateName(c.pid()))
			}
		})
	}
}

func TestParseAccess(t *testing.T) {
	tests := []struct {
		in      string
		want    Access
		wantErr bool
	}{
		{in: "same-uid", want: SameUID},
		{in: "root", want: RootOnly},
		{in: "all", want: All},
		{in: "", wantErr: true},
		{in: "ROOT", wantErr: true},
		{in: "sameuid", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAccess(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseAccess(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAccess(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("%v.String() = %q, want %q", got, got.String(), tt.in)
			}
		})
	}
}

func TestParseDetection(t *testing.T) {
	tests := []struct {
		in      string
		want    Detection
		wantErr bool
	}{
		{in: "auto", want: Auto},
		{in: "pidfd", want: Pidfd},
		{in: "sweep", want: Sweep},
		{in: "", wantErr: true},
		{in: "epoll", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDetection(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseDetection(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDetection(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("%v.String() = %q, want %q", got, got.String(), tt.in)
			}
		})
	}
}

func TestStateString(t *testing.T) {
	tests := []struct {
		state State
		want  string
	}{
		{Starting, "starting"},
		{Ready, "ready"},
		{Reloading, "reloading"},
		{Hung, "hung"},
		{Failed, "failed"},
		{State(99), "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.state.String(); got != tt.want {
				t.Fatalf("State(%d).String() = %q, want %q", tt.state, got, tt.want)
			}
		})
	}
}
