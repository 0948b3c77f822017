package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/internal/addrfile"
	"github.com/notifyd/notifyd/protocol"
)

// startTimeout bounds every wait for a process to be ready; it only keeps a
// broken run from hanging.
const startTimeout = 60 * time.Second

// lab owns what a run starts: a temporary directory, the binaries built
// into it and every process, which close stops on every path out.
type lab struct {
	root    string // the repository
	dir     string
	notifyd string // the binary, built as the wheel builds it
	bare    string // bench/bare, built the same way
	procs   []*proc
	seq     int // names the logs and directories
}

// proc is one process of a lab.
type proc struct {
	cmd     *exec.Cmd
	log     string
	stopSig syscall.Signal
	done    chan struct{}
}

func newLab(ctx context.Context, root string) (*lab, error) {
	dir, err := os.MkdirTemp("", "ndb")
	if err != nil {
		return nil, err
	}
	l := &lab{root: root, dir: dir, notifyd: filepath.Join(dir, "notifyd"), bare: filepath.Join(dir, "bare")}
	progress("building notifyd and the bare server (CGO_ENABLED=0, as the wheel)")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", dir+"/", "./cmd/notifyd", "./bench/bare")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return l, nil
}

// close stops every process still running and removes the directory.
func (l *lab) close() {
	for _, p := range l.procs {
		p.stop()
	}
	os.RemoveAll(l.dir)
}

// tempDir makes a directory of its own inside the lab's, with a short path
// for the sockets in it.
func (l *lab) tempDir() (string, error) {
	l.seq++
	d := filepath.Join(l.dir, strconv.Itoa(l.seq))
	return d, os.Mkdir(d, 0o700)
}

// start runs cmd in a process group of its own, its output in a log, and
// has the kernel kill it should this program die first. With an address
// file, cmd runs notifyd, started through addrfile.
func (l *lab) start(cmd *exec.Cmd, stopSig syscall.Signal, addrFile string) (*proc, error) {
	l.seq++
	p := &proc{cmd: cmd, log: filepath.Join(l.dir, strconv.Itoa(l.seq)+".log"), stopSig: stopSig, done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if addrFile != "" {
		err = addrfile.Start(cmd, addrFile)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Args[0], err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	l.procs = append(l.procs, p)
	return p, nil
}

// stop asks the process to stop and kills its group when it takes longer
// than a few seconds.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(p.stopSig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// pid is the process's id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// awaitLog waits until the log matches re and returns the first submatch.
func (p *proc) awaitLog(re *regexp.Regexp) (string, error) {
	for deadline := time.Now().Add(startTimeout); ; {
		b, _ := os.ReadFile(p.log)
		if m := re.FindSubmatch(b); m != nil {
			return string(m[1]), nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("%s exited at start:\n%s", p.cmd.Args[0], b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s did not log %q within %s:\n%s", p.cmd.Args[0], re, startTimeout, b)
		}
	}
}

// server is a notifyd or a bare server, and where it answers.
type server struct {
	*proc
	url    string // the health check
	socket string // notifyd's notify socket
}

// startNotifyd runs notifyd with its state and socket in a directory of
// its own, on a port the kernel picks, and with env added to the
// environment (GOGC=400 for the old settings).
func (l *lab) startNotifyd(env []string, args ...string) (*server, error) {
	return l.startNotifydBinary(l.notifyd, env, args...)
}

// buildAt builds notifyd as it was at the git revision rev, into the lab's
// directory, and returns the binary's path.
func (l *lab) buildAt(ctx context.Context, rev string) (string, error) {
	src, err := l.tempDir()
	if err != nil {
		return "", err
	}
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", l.root, rev, src)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(l.dir, "notifyd-"+strconv.Itoa(l.seq))
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/notifyd")
	build.Dir, build.Env = src, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build at %s: %v\n%s", rev, err, out)
	}
	return bin, nil
}

// startNotifydBinary is startNotifyd with another notifyd binary.
func (l *lab) startNotifydBinary(binary string, env []string, args ...string) (*server, error) {
	dir, err := l.tempDir()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, append([]string{"--socket", filepath.Join(dir, "notify.sock"),
		"--dir", dir, "--bind", "127.0.0.1:0", "--log-level", "warn"}, args...)...)
	cmd.Env = append(cleanEnv(), env...)
	path := filepath.Join(dir, "address.json")
	p, err := l.start(cmd, syscall.SIGTERM, path)
	if err != nil {
		return nil, err
	}
	a, err := addrfile.Await(path, p.done, startTimeout)
	if err != nil {
		b, _ := os.ReadFile(p.log)
		return nil, fmt.Errorf("%w:\n%s", err, b)
	}
	return &server{proc: p, url: "http://" + a.HTTP + "/", socket: a.Socket}, nil
}

// startBare runs the bare server with env added to the environment.
func (l *lab) startBare(env ...string) (*server, error) {
	return l.startBareArgs(nil, env...)
}

// startBareArgs runs the bare server with args, and env added to the
// environment.
func (l *lab) startBareArgs(args []string, env ...string) (*server, error) {
	cmd := exec.Command(l.bare, args...)
	cmd.Env = append(cleanEnv(), env...)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd.Stdout = w
	p, err := l.start(cmd, syscall.SIGTERM, "")
	w.Close()
	if err != nil {
		return nil, err
	}
	r.SetReadDeadline(time.Now().Add(startTimeout))
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("read the bare server's address: %w", err)
	}
	return &server{proc: p, url: "http://" + strings.TrimSpace(line) + "/"}, nil
}

// cleanEnv is this program's environment without the settings that would
// change what a server under test does: its own notifyd flags and the Go
// runtime's memory settings.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NOTIFYD_") && !strings.HasPrefix(kv, "GOGC=") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
			env = append(env, kv)
		}
	}
	return env
}

// get makes one GET request on a new connection and returns the status and
// body.
func get(url string) (int, string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode, string(b), err
}

// awaitAnswer asks url until it answers 200 with body.
func awaitAnswer(url, body string) error {
	var last string
	for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, b, err := get(url)
		if err == nil && code == http.StatusOK && b == body {
			return nil
		}
		last = fmt.Sprintf("%d %q %v", code, b, err)
	}
	return fmt.Errorf("%s did not answer 200 %q within %s; last: %s", url, body, startTimeout, last)
}

// workers are sleep processes registered with notifyd as ready workers.
type workers []*exec.Cmd

// startWorkers starts n sleep processes, killed with this program.
func startWorkers(n int) (workers, error) {
	ws := make(workers, 0, n)
	for range n {
		c := exec.Command("sleep", "1000")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			ws.stop()
			return nil, fmt.Errorf("start worker %d of %d: %w", len(ws)+1, n, err)
		}
		ws = append(ws, c)
	}
	return ws, nil
}

// register sends READY=1 for every worker to s, then a barrier, and waits
// until the health check counts them all.
func (ws workers) register(s *server) error {
	c, err := protocol.Dial(s.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, w := range ws {
		if err := c.Send([]byte("READY=1\nPID="+strconv.Itoa(w.Process.Pid)), 10*time.Second); err != nil {
			return err
		}
	}
	if err := c.Barrier(time.Minute); err != nil {
		return err
	}
	return awaitAnswer(s.url, fmt.Sprintf("%d workers ready\n", len(ws)))
}

// stop kills and reaps every worker.
func (ws workers) stop() {
	for _, w := range ws {
		w.Process.Kill()
	}
	for _, w := range ws {
		w.Wait()
	}
}

// memory reads a resident set size field of /proc/<pid>/status, VmRSS or
// VmHWM (the peak), in MiB.
func memory(pid int, field string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpuTime is the CPU time pid's threads have run, from the first field of
// /proc/<pid>/task/*/schedstat (nanoseconds).
func cpuTime(pid int) (time.Duration, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no schedstat for pid %d", pid)
	}
	var total time.Duration
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that has exited
		}
		ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		if err != nil {
			return 0, err
		}
		total += time.Duration(ns)
	}
	return total, nil
}
