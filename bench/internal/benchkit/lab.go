package benchkit

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

	"golang.org/x/sys/unix"
)

// Lab owns everything a benchmark run starts: a temporary directory, the
// notifyd binary built into it, and every process started with Start. Close
// stops and reaps all of them and removes the directory. A Lab is used from
// one goroutine only.
type Lab struct {
	// Dir is the temporary directory, made under $TMPDIR, else /tmp. Its
	// name is short, so that socket paths inside it stay under the 108-byte
	// sun_path limit.
	Dir string
	// Notifyd is where BuildNotifyd puts the notifyd binary.
	Notifyd string

	name        string
	out         io.Writer
	stopTimeout time.Duration
	procs       []*Proc
}

// buildTimeout bounds go build: generous enough for a cold build cache on a
// loaded machine, it only keeps a broken build from hanging the run.
const buildTimeout = 5 * time.Minute

// logPoll is how often AwaitLog reads a log again.
const logPoll = 10 * time.Millisecond

// NewLab makes the temporary directory of a run of the benchmark called
// name. Progress lines go to progress, each starting with "name: ". A
// process that has not exited stopTimeout after its stop signal is killed.
func NewLab(name string, progress io.Writer, stopTimeout time.Duration) (*Lab, error) {
	dir, err := os.MkdirTemp("", "nd")
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	return &Lab{
		Dir:         dir,
		Notifyd:     filepath.Join(dir, "notifyd"),
		name:        name,
		out:         progress,
		stopTimeout: stopTimeout,
	}, nil
}

// Progress writes one progress line.
func (l *Lab) Progress(format string, args ...any) {
	fmt.Fprintf(l.out, "%s: %s\n", l.name, fmt.Sprintf(format, args...))
}

// BuildNotifyd compiles notifyd from the repository at root into
// l.Notifyd, without -race, so that it runs as it would in production. The
// compiler's messages go to the progress output.
func (l *Lab) BuildNotifyd(ctx context.Context, root string) error {
	l.Progress("building notifyd")
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", l.Notifyd, "./cmd/notifyd")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = l.out, l.out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/notifyd: %w", err)
	}
	return nil
}

// Proc is one process a Lab runs. Fill in the exported fields, then pass it
// to Lab.Start; they are not to change afterwards.
type Proc struct {
	Name       string         // how messages call it: "gunicorn", "notifyd death-pidfd"
	Cmd        *exec.Cmd      // what to run; Start sets its output and SysProcAttr
	Log        string         // the file Start creates for its stdout and stderr
	StopSignal syscall.Signal // what asks it to stop; SIGTERM when zero
	// Group gives it a process group of its own, so that its children are
	// killed with it and a terminal's ^C reaches it only through Close.
	Group bool

	stopTimeout time.Duration
	done        chan struct{}
	err         error // exit status, once done is closed
	stopped     bool
}

// Start runs p. Should this process die first, the kernel kills p
// (PR_SET_PDEATHSIG); otherwise it runs until p.Stop or l.Close.
func (l *Lab) Start(p *Proc) error {
	if p.StopSignal == 0 {
		p.StopSignal = syscall.SIGTERM
	}
	p.stopTimeout = l.stopTimeout
	p.done = make(chan struct{})
	logFile, err := os.Create(p.Log)
	if err != nil {
		return fmt.Errorf("create log of %s: %w", p.Name, err)
	}
	p.Cmd.Stdout, p.Cmd.Stderr = logFile, logFile
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: p.Group}
	err = p.Cmd.Start()
	logFile.Close()
	if err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	l.procs = append(l.procs, p)
	// Ends when the process does; Close and Stop wait for it.
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	return nil
}

// Close stops every process still running and removes the temporary
// directory. It signals them all first and then waits for each, so that a
// slow one does not hold up the others' shutdown. It returns an error naming
// each process it had to kill; calling it again does nothing.
func (l *Lab) Close() error {
	var errs []error
	for _, p := range l.procs {
		if !p.stopped {
			p.Cmd.Process.Signal(p.StopSignal)
		}
	}
	for _, p := range l.procs {
		if !p.stopped && !p.waitOrKill() {
			errs = append(errs, p.killedError())
		}
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", l.Dir, err))
	}
	return errors.Join(errs...)
}

// NotifydStarted matches the line notifyd logs once its socket and its HTTP
// port are ready; the submatch is the host:port it bound.
var NotifydStarted = regexp.MustCompile(`msg="notifyd started".* bind=(\S+)`)

// AwaitLog waits until p's log matches re and returns the submatches. It
// fails when p exits first, when timeout passes, or when ctx ends.
func (p *Proc) AwaitLog(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(p.Log)
		if err != nil {
			return nil, fmt.Errorf("read log of %s: %w", p.Name, err)
		}
		if m := re.FindStringSubmatch(string(b)); m != nil {
			return m, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not log %q within %s:\n%s", p.Name, re, timeout, p.LogTail())
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at start (%v):\n%s", p.Name, p.err, p.LogTail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(logPoll):
		}
	}
}

// LogTail is the end of p's log, for error messages.
func (p *Proc) LogTail() string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const keep = 3000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return string(b)
}

// Explain adds to err what became of p when p has exited, which is then the
// likely cause; otherwise it returns err as it is.
func (p *Proc) Explain(err error) error {
	select {
	case <-p.done:
		return fmt.Errorf("%w (%s has exited: %v)\n%s", err, p.Name, p.err, p.LogTail())
	default:
		return err
	}
}

// Stop ends p with its stop signal, as a service manager would, and waits
// for it. It returns nil when p exits cleanly or was stopped before, and an
// error when p had exited by itself, exited with a failure status, or had to
// be killed.
func (p *Proc) Stop() error {
	if p.stopped {
		return nil
	}
	select {
	case <-p.done:
		p.stopped = true
		return fmt.Errorf("%s had already exited (%v):\n%s", p.Name, p.err, p.LogTail())
	default:
	}
	p.Cmd.Process.Signal(p.StopSignal)
	if !p.waitOrKill() {
		return p.killedError()
	}
	if p.err != nil {
		return fmt.Errorf("%s exited with %v after %s:\n%s", p.Name, p.err, unix.SignalName(p.StopSignal), p.LogTail())
	}
	return nil
}

// waitOrKill waits for p to exit after its stop signal, killing it (and with
// Group, what is left of its group) when it takes too long. It reports
// whether p exited by itself.
func (p *Proc) waitOrKill() bool {
	p.stopped = true
	select {
	case <-p.done:
		return true
	case <-time.After(p.stopTimeout):
		if p.Group {
			syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		} else {
			p.Cmd.Process.Kill()
		}
		<-p.done
		return false
	}
}

func (p *Proc) killedError() error {
	return fmt.Errorf("%s did not exit within %s of %s and was killed", p.Name, p.stopTimeout, unix.SignalName(p.StopSignal))
}

// Environ is this process's environment without the variables that start
// with any of prefixes ("NOTIFYD_", "GOGC="): settings of the caller that
// would change what a process under test does.
func Environ(prefixes ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !hasAnyPrefix(kv, prefixes) {
			env = append(env, kv)
		}
	}
	return env
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Pause sleeps for d. When ctx ends first, it returns at once with ctx's
// error.
func Pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
