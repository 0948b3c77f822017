//go:build linux

package registry

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOneRegistryPerDirectory: while a registry holds its state directory,
// New on the same directory fails with ErrDirInUse naming the holder's pid;
// once it is closed, the directory is free again.
func TestOneRegistryPerDirectory(t *testing.T) {
	cfg := testConfig(t)
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(cfg)
	if !errors.Is(err, ErrDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("notifyd pid %d", os.Getpid())) {
		t.Fatalf("second New = %v, want ErrDirInUse naming pid %d", err, os.Getpid())
	}
	first.Close()
	again, err := New(cfg)
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	again.Close()
}

// TestLockFileNotNotifydsIsReplaced: a FIFO or a symlink where the lock file
// goes is replaced by a regular file, never waited on or followed.
func TestLockFileNotNotifydsIsReplaced(t *testing.T) {
	for _, kind := range []string{"fifo", "symlink"} {
		t.Run(kind, func(t *testing.T) {
			cfg := testConfig(t)
			path := filepath.Join(cfg.Dir, lockFile)
			target := filepath.Join(t.TempDir(), "target")
			writeFile(t, target, "untouched\n")
			var err error
			if kind == "fifo" {
				err = unix.Mkfifo(path, 0o666)
			} else {
				err = os.Symlink(target, path)
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer r.Close()
			if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("lock file: %v, want a regular file", err)
			}
			if got := readFile(t, target); got != "untouched\n" {
				t.Fatalf("the symlink's target now holds %q", got)
			}
		})
	}
}
