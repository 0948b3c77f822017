package benchkit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newTestLab is a lab whose processes get stopTimeout to exit, closed when
// the test ends.
func newTestLab(t *testing.T, stopTimeout time.Duration) (*Lab, *strings.Builder) {
	t.Helper()
	var progress strings.Builder
	l, err := NewLab("test", &progress, stopTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, &progress
}

// startShell starts a shell running script as name, its log in the lab's
// directory.
func startShell(t *testing.T, l *Lab, name, script string, group bool) *Proc {
	t.Helper()
	p := &Proc{Name: name, Cmd: exec.Command("sh", "-c", script), Log: filepath.Join(l.Dir, name+".log"), Group: group}
	if err := l.Start(p); err != nil {
		t.Fatal(err)
	}
	return p
}

var listening = regexp.MustCompile(`listening at (\S+)`)

// A server that logs its address and exits cleanly on SIGTERM.
const cleanServer = `trap 'exit 0' TERM; echo "listening at 127.0.0.1:8001"; while :; do sleep 0.05; done`

func TestProcLifecycle(t *testing.T) {
	l, progress := newTestLab(t, 10*time.Second)
	l.Progress("starting %d", 1)
	if got, want := progress.String(), "test: starting 1\n"; got != want {
		t.Errorf("progress = %q, want %q", got, want)
	}
	p := startShell(t, l, "server", cleanServer, false)
	m, err := p.AwaitLog(context.Background(), listening, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "127.0.0.1:8001" {
		t.Errorf("AwaitLog submatch = %q, want 127.0.0.1:8001", m[1])
	}
	cause := errors.New("connection refused")
	if err := p.Explain(cause); err != cause {
		t.Errorf("Explain of a running process = %v, want the error unchanged", err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	err = p.Explain(cause)
	if !errors.Is(err, cause) || !strings.Contains(err.Error(), "(server has exited: <nil>)") {
		t.Errorf("Explain of an exited process = %v, want the cause and the exit", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(l.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lab directory still there after Close (stat: %v)", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestProcFailures(t *testing.T) {
	cases := []struct {
		name   string
		script string
		act    func(*Proc) error
		want   []string // in the error
	}{
		{
			name:   "exits at start",
			script: `echo "no config"; exit 3`,
			act: func(p *Proc) error {
				_, err := p.AwaitLog(context.Background(), listening, 10*time.Second)
				return err
			},
			want: []string{"exits at start exited at start (exit status 3):", "no config"},
		},
		{
			name:   "never logs",
			script: `echo "starting"; exec sleep 60`,
			act: func(p *Proc) error {
				_, err := p.AwaitLog(context.Background(), listening, 100*time.Millisecond)
				return err
			},
			want: []string{`never logs did not log "listening at (\\S+)" within 100ms:`, "starting"},
		},
		{
			name:   "already exited",
			script: `echo "bye"`,
			act: func(p *Proc) error {
				<-p.done
				return p.Stop()
			},
			want: []string{"already exited had already exited (<nil>):", "bye"},
		},
		{
			name:   "fails on SIGTERM",
			script: `trap 'exit 4' TERM; echo "listening at x"; while :; do sleep 0.05; done`,
			act:    startedThenStop,
			want:   []string{"fails on SIGTERM exited with exit status 4 after SIGTERM:"},
		},
		{
			name:   "ignores SIGTERM",
			script: `trap '' TERM; echo "listening at x"; while :; do sleep 0.05; done`,
			act:    startedThenStop,
			want:   []string{"ignores SIGTERM did not exit within 200ms of SIGTERM and was killed"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, _ := newTestLab(t, 200*time.Millisecond)
			err := c.act(startShell(t, l, c.name, c.script, false))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// startedThenStop stops p once it has logged its address.
func startedThenStop(p *Proc) error {
	if _, err := p.AwaitLog(context.Background(), listening, 10*time.Second); err != nil {
		return err
	}
	return p.Stop()
}

func TestCloseKillsGroup(t *testing.T) {
	l, _ := newTestLab(t, 200*time.Millisecond)
	p := startShell(t, l, "stubborn", `trap '' TERM; sleep 60 & echo "child $!"; wait`, true)
	m, err := p.AwaitLog(context.Background(), regexp.MustCompile(`child (\d+)`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatal(err)
	}
	err = l.Close()
	if err == nil || err.Error() != "stubborn did not exit within 200ms of SIGTERM and was killed" {
		t.Errorf("Close = %v, want the kill reported", err)
	}
	// The child leaves the process table once its new parent reaps it; a
	// zombie is dead too.
	for deadline := time.Now().Add(10 * time.Second); ; {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if errors.Is(err, fs.ErrNotExist) || (err == nil && strings.Contains(string(stat), ") Z ")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sleep of the stubborn process's group still runs after Close: %s", stat)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestModuleRoot(t *testing.T) {
	ctx := context.Background()
	root, err := ModuleRoot(ctx, "test", "bench/internal/benchkit")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Errorf("ModuleRoot = %s, which has no go.mod: %v", root, err)
	}
	_, err = ModuleRoot(ctx, "test", "no/such/dir")
	if want := "module at " + root + " has no no/such/dir: run from the notifyd repository"; err == nil || err.Error() != want {
		t.Errorf("ModuleRoot with a missing path = %v, want %q", err, want)
	}
}

func TestDescribeMachine(t *testing.T) {
	m, err := DescribeMachine(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSpace(string(release)); m.Kernel != want {
		t.Errorf("Kernel = %q, want %q", m.Kernel, want)
	}
	if m.CPUs != runtime.NumCPU() {
		t.Errorf("CPUs = %d, want %d", m.CPUs, runtime.NumCPU())
	}
	// go test builds this test with the go command on PATH.
	if want := runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH; m.GoVersion != want {
		t.Errorf("GoVersion = %q, want %q", m.GoVersion, want)
	}
	if want := "Linux " + m.Kernel + ", "; !strings.HasPrefix(m.String(), want) {
		t.Errorf("String = %q, want it to start with %q", m, want)
	}
}

func TestEnviron(t *testing.T) {
	t.Setenv("NOTIFYD_REQUIRE", "3")
	t.Setenv("GOGC", "50")
	t.Setenv("BENCHKIT_KEPT", "1")
	env := Environ("NOTIFYD_", "GOGC=")
	for _, kv := range env {
		if strings.HasPrefix(kv, "NOTIFYD_") || strings.HasPrefix(kv, "GOGC=") {
			t.Errorf("Environ kept %s", kv)
		}
	}
	if !slices.Contains(env, "BENCHKIT_KEPT=1") {
		t.Error("Environ dropped BENCHKIT_KEPT=1")
	}
}

func TestPause(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if err := Pause(ctx, time.Millisecond); err != nil {
		t.Errorf("Pause = %v, want nil", err)
	}
	cancel()
	start := time.Now()
	if err := Pause(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Pause after cancel = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Pause after cancel took %s", d)
	}
}
