package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// lab is the benchmark's benchkit.Lab, with what it starts processes from.
// It is used from one goroutine only.
type lab struct {
	*benchkit.Lab
	self  string   // this program, which also runs the bare server
	env   []string // this environment without the settings the servers read
	tools tools
}

// Time limits of single operations, generous enough for a loaded machine;
// they only keep a broken run from hanging.
const (
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
	kit, err := benchkit.NewLab(benchName, progress, stopTimeout)
	if err != nil {
		return nil, err
	}
	return &lab{Lab: kit, self: self, env: benchkit.Environ(serverSettings...), tools: t}, nil
}

// start runs cmd as name, with its output in <dir>/<name>.log. stopSig
// asks it to stop; with group, it gets a process group of its own, killed as
// a whole when it does not stop.
func (l *lab) start(name string, cmd *exec.Cmd, stopSig syscall.Signal, group bool) (*benchkit.Proc, error) {
	p := &benchkit.Proc{Name: name, Cmd: cmd, Log: filepath.Join(l.Dir, name+".log"), StopSignal: stopSig, Group: group}
	if err := l.Start(p); err != nil {
		return nil, err
	}
	return p, nil
}
