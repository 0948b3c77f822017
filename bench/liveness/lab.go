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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// lab owns everything the benchmark starts: a temporary directory, the
// notifyd binary built into it, notifyd instances and sleeping children.
// Close stops and reaps all of them and removes the directory. It is used
// from one goroutine only.
type lab struct {
	dir      string
	bin      string
	sleepBin string
	env      []string // this environment without NOTIFYD_* settings
	out      io.Writer
	daemons  []*daemon
	sleepers map[*sleeper]struct{}
}

// Time limits of single operations, generous enough for a loaded machine;
// they only keep a broken run from hanging.
const (
	buildTimeout   = 5 * time.Minute
	startTimeout   = 15 * time.Second
	stopTimeout    = 10 * time.Second
	sendTimeout    = 5 * time.Second
	barrierTimeout = 60 * time.Second
	httpTimeout    = 10 * time.Second
)

func newLab(progress io.Writer) (*lab, error) {
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		return nil, fmt.Errorf("find sleep: %w", err)
	}
	// Short, so socket paths stay under the 108-byte sun_path limit.
	dir, err := os.MkdirTemp("", "ndb")
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	var env []string
	for _, kv := range os.Environ() {
		// notifyd reads a NOTIFYD_* variable for every flag not given, and
		// RUNTIME_DIRECTORY for defaults: none of the caller's may leak in.
		if !strings.HasPrefix(kv, "NOTIFYD_") && !strings.HasPrefix(kv, "RUNTIME_DIRECTORY=") {
			env = append(env, kv)
		}
	}
	return &lab{
		dir:      dir,
		bin:      filepath.Join(dir, "notifyd"),
		sleepBin: sleepBin,
		env:      env,
		out:      progress,
		sleepers: make(map[*sleeper]struct{}),
	}, nil
}

func (l *lab) progress(format string, args ...any) {
	fmt.Fprintf(l.out, "liveness: "+format+"\n", args...)
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

// Close stops every notifyd still running, kills and reaps every sleeper
// still alive and removes the temporary directory.
func (l *lab) Close() error {
	var errs []error
	for _, d := range l.daemons {
		if d.stopped {
			continue
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, d := range l.daemons {
		if !d.stopped {
			d.waitOrKill()
		}
	}
	l.reap(l.live()...)
	if err := os.RemoveAll(l.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", l.dir, err))
	}
	return errors.Join(errs...)
}

// sleeper is a `sleep` child standing in for a worker.
type sleeper struct {
	cmd *exec.Cmd
	pid int
}

func (l *lab) live() []*sleeper {
	out := make([]*sleeper, 0, len(l.sleepers))
	for s := range l.sleepers {
		out = append(out, s)
	}
	return out
}

// spawn starts n sleepers that live for life unless killed. Should this
// process die first, the kernel kills them (PR_SET_PDEATHSIG).
func (l *lab) spawn(ctx context.Context, n int, life time.Duration) ([]*sleeper, error) {
	secs := strconv.FormatInt(int64(life/time.Second), 10)
	out := make([]*sleeper, 0, n)
	for i := range n {
		if i%256 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		cmd := exec.Command(l.sleepBin, secs)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start sleeper %d of %d: %w", i+1, n, err)
		}
		s := &sleeper{cmd: cmd, pid: cmd.Process.Pid}
		l.sleepers[s] = struct{}{}
		out = append(out, s)
	}
	return out, nil
}

// reap kills the given sleepers, all first and then waits for each, so a
// large set goes quickly. Sleepers already reaped are skipped.
func (l *lab) reap(ss ...*sleeper) {
	var wait []*sleeper
	for _, s := range ss {
		if _, ok := l.sleepers[s]; ok {
			s.cmd.Process.Kill()
			wait = append(wait, s)
		}
	}
	for _, s := range wait {
		s.cmd.Wait() // "signal: killed" is the expected outcome
		delete(l.sleepers, s)
	}
}

func pids(ss []*sleeper) []int {
	out := make([]int, len(ss))
	for i, s := range ss {
		out[i] = s.pid
	}
	return out
}

// daemon is one running notifyd.
type daemon struct {
	name    string
	flags   []string // the flags that set it apart from the others
	cmd     *exec.Cmd
	dir     string // its state directory, which also holds its socket
	socket  string
	logPath string
	addr    string // HTTP host:port
	done    chan struct{}
	err     error // exit status, once done is closed
	stopped bool
}

var startedLine = regexp.MustCompile(`msg="notifyd started".* bind=(\S+)`)

// startDaemon runs notifyd with its state and socket in a directory of its
// own, an HTTP port picked by the kernel, and flags. It returns once notifyd
// has logged that it started, which it does after its socket and port are
// ready.
func (l *lab) startDaemon(ctx context.Context, name string, flags ...string) (*daemon, error) {
	d := &daemon{
		name:    name,
		flags:   flags,
		dir:     filepath.Join(l.dir, name),
		logPath: filepath.Join(l.dir, name+".log"),
		done:    make(chan struct{}),
	}
	d.socket = filepath.Join(d.dir, "notify.sock")
	if err := os.Mkdir(d.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory of %s: %w", name, err)
	}
	logFile, err := os.Create(d.logPath)
	if err != nil {
		return nil, fmt.Errorf("create log of %s: %w", name, err)
	}
	args := append([]string{
		"--socket", d.socket, "--dir", d.dir, "--bind", "127.0.0.1:0",
		"--require", "1", "--log-level", "info",
	}, flags...)
	d.cmd = exec.Command(l.bin, args...)
	d.cmd.Env = l.env
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = d.cmd.Start()
	logFile.Close()
	if err != nil {
		return nil, fmt.Errorf("start notifyd %s: %w", name, err)
	}
	l.daemons = append(l.daemons, d)
	go func() { d.err = d.cmd.Wait(); close(d.done) }()

	deadline := time.Now().Add(startTimeout)
	for {
		b, err := os.ReadFile(d.logPath)
		if err != nil {
			return nil, fmt.Errorf("read log of %s: %w", name, err)
		}
		if m := startedLine.FindSubmatch(b); m != nil {
			d.addr = string(m[1])
			return d, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("notifyd %s did not log %q within %s:\n%s", name, "notifyd started", startTimeout, d.logTail())
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("notifyd %s exited at start (%v):\n%s", name, d.err, d.logTail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stateFile is the path of the state file notifyd writes for pid.
func (d *daemon) stateFile(pid int) string {
	return filepath.Join(d.dir, ".gunicorn.worker."+strconv.Itoa(pid))
}

// logTail is the end of notifyd's log, for error messages.
func (d *daemon) logTail() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const keep = 2000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return string(b)
}

// logContains reports whether notifyd has logged s.
func (d *daemon) logContains(s string) bool {
	b, _ := os.ReadFile(d.logPath)
	return strings.Contains(string(b), s)
}

// explain adds to err what became of notifyd, when it has exited.
func (d *daemon) explain(err error) error {
	select {
	case <-d.done:
		return fmt.Errorf("%w (notifyd %s has exited: %v)\n%s", err, d.name, d.err, d.logTail())
	default:
		return err
	}
}

// stop ends notifyd with SIGTERM, as a service manager would, and reports an
// exit that was not clean.
func (d *daemon) stop() error {
	if d.stopped {
		return nil
	}
	select {
	case <-d.done:
		d.stopped = true
		return fmt.Errorf("notifyd %s had already exited (%v):\n%s", d.name, d.err, d.logTail())
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if !d.waitOrKill() {
		return fmt.Errorf("notifyd %s did not exit within %s of SIGTERM and was killed", d.name, stopTimeout)
	}
	if d.err != nil {
		return fmt.Errorf("notifyd %s exited with %v after SIGTERM:\n%s", d.name, d.err, d.logTail())
	}
	return nil
}

// waitOrKill waits for notifyd to exit after a signal, killing it when it
// takes too long. It reports whether it exited by itself.
func (d *daemon) waitOrKill() bool {
	d.stopped = true
	select {
	case <-d.done:
		return true
	case <-time.After(stopTimeout):
		d.cmd.Process.Kill()
		<-d.done
		return false
	}
}

// dial connects a notify client to notifyd's socket.
func (d *daemon) dial() (*protocol.Client, error) {
	c, err := protocol.Dial(d.socket)
	if err != nil {
		return nil, d.explain(err)
	}
	return c, nil
}

// messages formats one datagram per pid, such as "READY=1\nPID=1234".
func messages(format string, pids []int) [][]byte {
	out := make([][]byte, len(pids))
	for i, pid := range pids {
		out[i] = fmt.Appendf(nil, format, pid)
	}
	return out
}

// sendAll sends every message, then a barrier: when it returns nil, notifyd
// has applied them all. A message notifyd rejects does not make it fail;
// callers check the health count afterwards.
func sendAll(d *daemon, c *protocol.Client, msgs [][]byte) error {
	for _, m := range msgs {
		if err := c.Send(m, sendTimeout); err != nil {
			return d.explain(err)
		}
	}
	if err := c.Barrier(barrierTimeout); err != nil {
		return d.explain(err)
	}
	return nil
}

// notify dials notifyd, sends one message per pid in format, and waits on a
// barrier.
func notify(d *daemon, format string, pids []int) error {
	c, err := d.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	return sendAll(d, c, messages(format, pids))
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
