package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// lab owns everything the benchmark starts: a temporary directory, the
// notifyd binary built into it, and every process. Close stops and reaps all
// of them and removes the directory. It is used from one goroutine only.
type lab struct {
	dir   string
	bin   string   // notifyd, built into dir
	self  string   // this program, which also runs the bare server
	env   []string // this environment without the settings the servers read
	tools tools
	out   io.Writer
	procs []*proc
}

// Time limits of single operations, generous enough for a loaded machine;
// they only keep a broken run from hanging.
const (
	buildTimeout = 5 * time.Minute
	startTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
	httpTimeout  = 10 * time.Second
)

// serverSettings are environment variables the servers under test read, and
// which the caller's environment must not set for them.
var serverSettings = []string{"NOTIFYD_", "RUNTIME_DIRECTORY=", "NOTIFY_SOCKET=", "GOGC=", "GOMAXPROCS=", "GODEBUG="}

func newLab(progress io.Writer, t tools) (*lab, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this program for the bare server: %w", err)
	}
	// Short, so socket paths stay under the 108-byte sun_path limit.
	dir, err := os.MkdirTemp("", "ndsat")
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !hasAnyPrefix(kv, serverSettings) {
			env = append(env, kv)
		}
	}
	return &lab{dir: dir, bin: filepath.Join(dir, "notifyd"), self: self, env: env, tools: t, out: progress}, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func (l *lab) progress(format string, args ...any) {
	fmt.Fprintf(l.out, "saturation: "+format+"\n", args...)
}

// build compiles notifyd from the repository at root, without -race.
func (l *lab) build(ctx context.Context, root string) error {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", l.bin, "./cmd/notifyd")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = l.out, l.out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/notifyd: %w", err)
	}
	return nil
}

// Close stops every process still running, and removes the temporary
// directory. It asks them all first and then waits for each, so a slow one
// does not hold up the others' shutdown.
func (l *lab) Close() error {
	var errs []error
	for _, p := range l.procs {
		if !p.stopped {
			p.cmd.Process.Signal(p.stopSig)
		}
	}
	for _, p := range l.procs {
		if !p.stopped && !p.waitOrKill() {
			errs = append(errs, fmt.Errorf("%s did not exit within %s of %s and was killed", p.name, stopTimeout, p.stopSig))
		}
	}
	if err := os.RemoveAll(l.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", l.dir, err))
	}
	return errors.Join(errs...)
}

// proc is one process the lab started, its output going to a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	stopSig syscall.Signal // what asks it to stop
	group   bool           // it leads a process group of its own, killed as a whole when it does not stop
	done    chan struct{}
	err     error // exit status, once done is closed
	stopped bool
}

// start runs cmd with its output in <dir>/<name>.log. Should this process
// die first, the kernel kills it (PR_SET_PDEATHSIG). With group, it gets a
// process group of its own, so that its children can be killed with it and
// a terminal's ^C reaches it only through Close.
func (l *lab) start(name string, cmd *exec.Cmd, stopSig syscall.Signal, group bool) (*proc, error) {
	p := &proc{
		name:    name,
		cmd:     cmd,
		logPath: filepath.Join(l.dir, name+".log"),
		stopSig: stopSig,
		group:   group,
		done:    make(chan struct{}),
	}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, fmt.Errorf("create log of %s: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: group}
	err = cmd.Start()
	logFile.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	l.procs = append(l.procs, p)
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// awaitLog waits until the log matches re, and returns the submatches.
func (p *proc) awaitLog(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	deadline := time.Now().Add(startTimeout)
	for {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			return nil, fmt.Errorf("read log of %s: %w", p.name, err)
		}
		if m := re.FindStringSubmatch(string(b)); m != nil {
			return m, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not log %q within %s:\n%s", p.name, re, startTimeout, p.logTail())
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at start (%v):\n%s", p.name, p.err, p.logTail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTail is the end of the log, for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const keep = 3000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return string(b)
}

// explain adds to err what became of the process, when it has exited.
func (p *proc) explain(err error) error {
	select {
	case <-p.done:
		return fmt.Errorf("%w (%s has exited: %v)\n%s", err, p.name, p.err, p.logTail())
	default:
		return err
	}
}

// waitOrKill waits for the process to exit after a signal, killing it (and
// with group, what is left of its group) when it takes too long. It reports
// whether it exited by itself.
func (p *proc) waitOrKill() bool {
	p.stopped = true
	select {
	case <-p.done:
		return true
	case <-time.After(stopTimeout):
		if p.group {
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		} else {
			p.cmd.Process.Kill()
		}
		<-p.done
		return false
	}
}

// pause sleeps for d unless ctx ends first.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
