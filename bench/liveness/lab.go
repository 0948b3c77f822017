package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
	"github.com/notifyd/notifyd/protocol"
)

// lab is the benchmark's benchkit.Lab, with the sleeping children that
// stand in for workers: its Close kills and reaps those too. It is used from
// one goroutine only.
type lab struct {
	*benchkit.Lab
	sleepBin string
	env      []string // this environment without NOTIFYD_* settings
	sleepers map[*sleeper]struct{}
}

// Time limits of single operations, generous enough for a loaded machine;
// they only keep a broken run from hanging.
const (
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
	kit, err := benchkit.NewLab(benchName, progress, stopTimeout)
	if err != nil {
		return nil, err
	}
	return &lab{
		Lab:      kit,
		sleepBin: sleepBin,
		// notifyd reads a NOTIFYD_* variable for every flag not given, and
		// RUNTIME_DIRECTORY for defaults: none of the caller's may leak in.
		env:      benchkit.Environ("NOTIFYD_", "RUNTIME_DIRECTORY="),
		sleepers: make(map[*sleeper]struct{}),
	}, nil
}

// Close stops every notifyd still running, removes the temporary directory,
// and kills and reaps every sleeper still alive.
func (l *lab) Close() error {
	err := l.Lab.Close()
	l.reap(l.live()...)
	return err
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
	*benchkit.Proc
	flags  []string // the flags that set it apart from the others
	dir    string   // its state directory, which also holds its socket
	socket string
	addr   string // HTTP host:port
}

// startDaemon runs notifyd with its state and socket in a directory of its
// own, an HTTP port picked by the kernel, and flags. It returns once notifyd
// has logged that it started, which it does after its socket and port are
// ready.
func (l *lab) startDaemon(ctx context.Context, name string, flags ...string) (*daemon, error) {
	return l.startDaemonIn(ctx, l.Dir, name, flags...)
}

// startDaemonIn is startDaemon with the state directory made in parent.
func (l *lab) startDaemonIn(ctx context.Context, parent, name string, flags ...string) (*daemon, error) {
	d := &daemon{flags: flags, dir: filepath.Join(parent, name)}
	d.socket = filepath.Join(d.dir, "notify.sock")
	if err := os.Mkdir(d.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory of %s: %w", name, err)
	}
	args := append([]string{
		"--socket", d.socket, "--dir", d.dir, "--bind", "127.0.0.1:0",
		"--require", "1", "--log-level", "info",
	}, flags...)
	cmd := exec.Command(l.Notifyd, args...)
	cmd.Env = l.env
	d.Proc = &benchkit.Proc{Name: "notifyd " + name, Cmd: cmd, Log: filepath.Join(l.Dir, name+".log")}
	if err := l.Start(d.Proc); err != nil {
		return nil, err
	}
	m, err := d.AwaitLog(ctx, benchkit.NotifydStarted, startTimeout)
	if err != nil {
		return nil, err
	}
	d.addr = m[1]
	return d, nil
}

func (d *daemon) pid() int { return d.Cmd.Process.Pid }

// stateFile is the path of the state file notifyd writes for pid.
func (d *daemon) stateFile(pid int) string {
	return filepath.Join(d.dir, ".gunicorn.worker."+strconv.Itoa(pid))
}

// logContains reports whether notifyd has logged s.
func (d *daemon) logContains(s string) bool {
	b, _ := os.ReadFile(d.Log)
	return strings.Contains(string(b), s)
}

// dial connects a notify client to notifyd's socket.
func (d *daemon) dial() (*protocol.Client, error) {
	c, err := protocol.Dial(d.socket)
	if err != nil {
		return nil, d.Explain(err)
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
			return d.Explain(err)
		}
	}
	if err := c.Barrier(barrierTimeout); err != nil {
		return d.Explain(err)
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
