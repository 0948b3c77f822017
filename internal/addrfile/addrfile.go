// Package addrfile is notifyd's address file: the small JSON object notifyd
// writes once every listener is bound (--address-file), and the launcher
// that starts notifyd and reads the file back to learn where it listens.
// A program that starts notifyd on port 0 learns the port the kernel chose
// from this file, never from notifyd's log.
//
// The file holds one object, written to a temporary name in the same
// directory and renamed into place, so that a reader sees all of it or
// nothing:
//
//	{"http":"127.0.0.1:41234","agent":"127.0.0.1:41235","socket":"/run/app/notify.sock"}
//
// "agent" is absent without --agent-bind. notifyd removes the file when it
// stops, if the file is still the one it wrote: another instance given the
// same path keeps its own.
package addrfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Addresses is where a running notifyd listens.
type Addresses struct {
	HTTP   string `json:"http"`            // the health check, host:port
	Agent  string `json:"agent,omitempty"` // the HAProxy agent-check, host:port; "" when off
	Socket string `json:"socket"`          // the notify socket: a path, or @name when abstract
}

// Written is an address file as Write left it.
type Written struct {
	path string
	file os.FileInfo // the file Write renamed into place
}

// Write writes a to path atomically: a temporary file in path's directory,
// made with a name of its own (so a shared, sticky directory is safe),
// renamed into place. Remove the result when the addresses are no longer
// served.
func Write(path string, a Addresses) (*Written, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("write address file %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o644)
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("write address file %s: %w", path, err)
	}
	return &Written{path: path, file: fi}, nil
}

// Remove removes the address file if it is still the one Write wrote: once
// another writer has replaced it, the file is that writer's.
func (w *Written) Remove() {
	if fi, err := os.Lstat(w.path); err == nil && os.SameFile(fi, w.file) {
		os.Remove(w.path)
	}
}

// Read reads the address file at path. An error that wraps fs.ErrNotExist
// means notifyd has not written it yet.
func Read(path string) (Addresses, error) {
	var a Addresses
	b, err := os.ReadFile(path)
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(b, &a); err != nil || a.HTTP == "" || a.Socket == "" {
		return a, fmt.Errorf("address file %s holds %q, not notifyd's addresses", path, b)
	}
	return a, nil
}

// Start starts cmd, which runs notifyd directly or through a wrapper that
// passes its arguments on, with "--address-file path" added to its
// arguments. Any file at path is removed first, so that Await never reads
// one left by an earlier notifyd. Start does not wait for notifyd to listen,
// and the caller waits for cmd as for any command it starts.
func Start(cmd *exec.Cmd, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	cmd.Args = append(cmd.Args, "--address-file", path)
	return cmd.Start()
}

// poll is how often Await looks for the file.
const poll = 5 * time.Millisecond

// Await waits until notifyd has written its address file at path and
// returns the addresses. It fails when exited is closed first (notifyd has
// exited), or when timeout passes.
func Await(path string, exited <-chan struct{}, timeout time.Duration) (Addresses, error) {
	deadline := time.Now().Add(timeout)
	for {
		a, err := Read(path)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return a, err
		}
		if time.Now().After(deadline) {
			return a, fmt.Errorf("notifyd wrote no address file within %s", timeout)
		}
		select {
		case <-exited:
			return a, errors.New("notifyd exited at start")
		case <-time.After(poll):
		}
	}
}
