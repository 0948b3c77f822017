//go:build linux

package registry

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// statLine builds a /proc/<pid>/stat line with the given command name,
// state (field 3) and start time (field 22); the other fields are the ones
// of a sleeping process.
func statLine(comm, state, startTime string) string {
	fields := []string{"4242", "(" + comm + ")", state}
	// Fields 4 to 21.
	fields = append(fields, strings.Fields("1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0")...)
	fields = append(fields, startTime)
	// Fields 23 to 52.
	fields = append(fields, strings.Fields("2281472 128 18446744073709551615 1 1 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0")...)
	return strings.Join(fields, " ") + "\n"
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name       string
		line       string
		wantStart  uint64
		wantZombie bool
		wantErr    bool
	}{
		{name: "plain", line: statLine("sleep", "S", "8812345"), wantStart: 8812345},
		{name: "running", line: statLine("gunicorn", "R", "1"), wantStart: 1},
		{name: "disk sleep", line: statLine("python3", "D", "77"), wantStart: 77},
		{name: "stopped", line: statLine("python3", "T", "77"), wantStart: 77},
		{name: "zombie", line: statLine("sleep", "Z", "500"), wantStart: 500, wantZombie: true},
		{name: "dead", line: statLine("sleep", "X", "500"), wantStart: 500, wantZombie: true},
		{name: "dead, old kernels", line: statLine("sleep", "x", "500"), wantStart: 500, wantZombie: true},
		{name: "spaces and parentheses in the name", line: statLine("a) (b c", "S", "123"), wantStart: 123},
		{name: "name that looks like a zombie", line: statLine("w) Z 1 (", "S", "123"), wantStart: 123},
		{name: "name ending in a parenthesis", line: statLine("gunicorn: worker)", "S", "9"), wantStart: 9},
		{name: "empty name", line: statLine("", "S", "9"), wantStart: 9},
		{name: "name with fields after it", line: statLine("x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", "S", "31"), wantStart: 31},
		{name: "largest start time", line: statLine("sleep", "S", "18446744073709551615"), wantStart: 18446744073709551615},
		{name: "no trailing newline", line: strings.TrimSuffix(statLine("sleep", "S", "5"), "\n"), wantStart: 5},
		{name: "empty", line: "", wantErr: true},
		{name: "no closing parenthesis", line: "4242 (sleep S 1 2 3", wantErr: true},
		{name: "nothing after the name", line: "4242 (sleep)", wantErr: true},
		{name: "one byte after the name", line: "4242 (sleep) ", wantErr: true},
		{name: "too few fields", line: "4242 (sleep) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0\n", wantErr: true},
		{name: "start time not a number", line: statLine("sleep", "S", "12a"), wantErr: true},
		{name: "start time negative", line: statLine("sleep", "S", "-1"), wantErr: true},
		{name: "start time too large", line: statLine("sleep", "S", "18446744073709551616"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.line))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseStat(%q) = %+v, want an error", tt.line, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseStat(%q): %v", tt.line, err)
			}
			if got != (procInfo{startTime: tt.wantStart, zombie: tt.wantZombie}) {
				t.Fatalf("parseStat(%q) = %+v, want start time %d, zombie %v", tt.line, got, tt.wantStart, tt.wantZombie)
			}
		})
	}
}

func TestParseStatSelf(t *testing.T) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseStat(b)
	if err != nil {
		t.Fatalf("parseStat(%q): %v", b, err)
	}
	if want := startTimeOf(t, os.Getpid()); got != (procInfo{startTime: want}) {
		t.Fatalf("parseStat(%q) = %+v, want start time %d, not a zombie", b, got, want)
	}
}

// TestReadProcOddName registers a real process whose command name holds
// spaces and parentheses, and reads like a zombie's state when split at its
// first ')'.
func TestReadProcOddName(t *testing.T) {
	const name = "w) Z 1 (x y)"
	exe := filepath.Join(t.TempDir(), name)
	copyExecutable(t, "sleep", exe)
	c := startProcess(t, nil, exe, "1000")
	eventually(t, "the odd-named process to exec", func() bool {
		b, err := os.ReadFile("/proc/" + itoa(c.pid()) + "/comm")
		return err == nil && string(b) == name+"\n"
	})

	info, err := readProc(c.pid())
	if err != nil {
		t.Fatalf("readProc: %v", err)
	}
	if want := startTimeOf(t, c.pid()); info != (procInfo{startTime: want}) {
		t.Fatalf("readProc = %+v, want start time %d, not a zombie", info, want)
	}

	cfg := testConfig(t)
	r := startRegistry(t, cfg)
	send(t, r, ready(c.pid()), rootCreds())
	wantSummary(t, r, Summary{Ready: 1, Workers: 1})
	if got, want := readFile(t, statePath(cfg.Dir, c.pid())), wantState(oneWorker(t, r)); got != want {
		t.Fatalf("state file holds\n%q\nwant\n%q", got, want)
	}
	c.kill(t)
	waitZombie(t, c.pid())
	if _, err := readProc(c.pid()); err != errGone {
		t.Fatalf("readProc of the zombie: %v, want errGone", err)
	}
}

func TestReadProcMissing(t *testing.T) {
	c := startSleep(t)
	c.killAndReap(t)
	for _, pid := range []int{c.pid(), 1 << 22, 0, -1} {
		t.Run(itoa(pid), func(t *testing.T) {
			if _, err := readProc(pid); err != errGone {
				t.Fatalf("readProc(%d): %v, want errGone", pid, err)
			}
		})
	}
}

func TestRealUID(t *testing.T) {
	tests := []struct {
		name  string
		start func(t *testing.T) *child
		want  int
	}{
		{name: "root", start: func(t *testing.T) *child { return startSleep(t) }, want: 0},
		{name: "nobody", start: func(t *testing.T) *child { return startSleepAs(t, nobody, nobody) }, want: nobody},
		{name: "effective nobody", start: func(t *testing.T) *child {
			return startSetpriv(t, "--euid=65534", "--egid=65534", "--clear-groups")
		}, want: 0},
		{name: "real nobody", start: func(t *testing.T) *child {
			return startSetpriv(t, "--ruid=65534", "--rgid=65534", "--clear-groups")
		}, want: nobody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.start(t)
			got, err := realUID(c.pid())
			if err != nil || got != tt.want {
				t.Fatalf("realUID(%d) = %d, %v, want %d", c.pid(), got, err, tt.want)
			}
		})
	}
}

// copyExecutable copies the program name, as found in PATH, to dst.
func copyExecutable(t *testing.T, name, dst string) {
	t.Helper()
	src, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
