//go:build linux

package registry

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/protocol"
)

// recover adopts the workers named by the state files in the directory that
// are still the same live processes, and deletes the files of the others.
// Files that do not match the name pattern are never touched.
func (r *Registry) recover() error {
	names, err := os.ReadDir(r.cfg.Dir)
	if err != nil {
		return fmt.Errorf("read state directory: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	dropLog := protocol.NewLogLimiter(20, time.Minute)
	kept, dropped := 0, 0
	for _, de := range names {
		pid, tmp, ok := r.files.match(de.Name())
		if !ok {
			continue
		}
		path := filepath.Join(r.cfg.Dir, de.Name())
		if tmp || !de.Type().IsRegular() {
			os.Remove(path) // a write cut short by a crash, or not ours to read
			continue
		}
		why, err := r.adopt(pid, path)
		if err != nil {
			return err
		}
		if why != "" {
			// Another user may have filled the directory with such files.
			dropLog.Log(r.log, slog.LevelInfo, "state file dropped at recovery", "pid", pid, "reason", why)
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				r.fileErrors.Add(1)
				dropLog.Log(r.log, slog.LevelError, "state file not removed", "pid", pid, "error", err)
			}
			dropped++
			continue
		}
		kept++
	}
	r.log.Info("recovered state files", "dir", r.cfg.Dir, "kept", kept, "dropped", dropped)
	return nil
}

// adopt registers the worker of one state file as ready. It returns why the
// file does not describe a live worker, or "" when it was adopted.
func (r *Registry) adopt(pid int, path string) (string, error) {
	saved, owner, err := readState(path)
	if err != nil {
		return "unreadable: " + err.Error(), nil
	}
	if !ownFile(unix.Stat_t{Uid: uint32(owner)}) {
		return fmt.Sprintf("owned by uid %d, neither notifyd's user nor root", owner), nil
	}
	if saved.pid != 0 && saved.pid != pid {
		return fmt.Sprintf("file says PID=%d", saved.pid), nil
	}
	info, err := readProc(pid)
	if err == nil {
		err = r.mayAdopt(pid, owner)
	}
	if errors.Is(err, errGone) {
		return "process has exited", nil
	}
	if errors.Is(err, ErrNotPermitted) {
		return err.Error(), nil
	}
	if err != nil {
		return "", err
	}
	if saved.startTime != 0 && saved.startTime != info.startTime {
		return "pid now belongs to another process", nil
	}
	e, err := r.add(pid, info.startTime, -1)
	if errors.Is(err, errGone) {
		return "process has exited", nil
	}
	if err != nil {
		return "", err
	}
	now := time.Now()
	e.State, e.ReadyAt, e.beat = Ready, saved.readyAt, now
	if e.ReadyAt.IsZero() {
		e.ReadyAt = now
	}
	e.Status, e.WatchdogUSec, e.saved = saved.status, saved.watchdogUSec, true
	if saved.startTime == 0 {
		r.writeFile(e) // a seed-style empty file: record the start time now
	}
	r.armHeartbeat(e, now)
	r.ready++
	return "", nil
}

// mayAdopt applies the access rule to a state file as to a message: the
// file's owner is its sender. Root's files may name any pid; under
// --access same-uid any other owner only its own processes, and under
// --access root none. So a file adopts no worker that its owner could not
// have registered by a datagram.
func (r *Registry) mayAdopt(pid, owner int) error {
	if r.cfg.Access == RootOnly && owner != 0 {
		return fmt.Errorf("%w: the file belongs to uid %d, and access is root", ErrNotPermitted, owner)
	}
	return r.mayDirect(pid, protocol.Credentials{UID: owner})
}
