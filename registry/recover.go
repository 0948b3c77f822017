//go:build linux

package registry

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
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
			r.log.Info("state file dropped at recovery", "pid", pid, "reason", why)
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				r.fileErrors.Add(1)
				r.log.Error("state file not removed", "pid", pid, "error", err)
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
	saved, err := readState(path)
	if err != nil {
		return "unreadable: " + err.Error(), nil
	}
	if saved.pid != 0 && saved.pid != pid {
		return fmt.Sprintf("file says PID=%d", saved.pid), nil
	}
	info, err := readProc(pid)
	if errors.Is(err, errExited) {
		return "process has exited", nil
	}
	if err != nil {
		return "", err
	}
	if saved.startTime != 0 && saved.startTime != info.startTime {
		return "pid now belongs to another process", nil
	}
	e, err := r.add(pid, info.startTime, -1)
	if errors.Is(err, errExited) {
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
