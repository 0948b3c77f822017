package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// regRounds is how many rounds of each writer run. Rates on a shared
// machine drift by a factor of two within minutes, so there are enough of
// them for the medians to hold still.
const regRounds = 15

// plainBody is what the plain loop writes: 70 bytes, about the size of a
// notifyd state file.
var plainBody = []byte("PID=1234567\nSTARTTIME=123456789\nREADY_AT=2026-11-24T20:19:36.1234567Z\n")

// registrationResult is the registration rate measurement on each file
// system it ran on.
type registrationResult struct {
	workers   int
	dgramQlen int // net.unix.max_dgram_qlen when notifyd's sockets were made
	runs      []*registrationRun
}

// registrationRun is one file system's rounds: files per second, one value
// per round, for notifyd and for the plain loop.
type registrationRun struct {
	dir     string // where both wrote, for the report
	fsType  string
	notifyd []float64
	plain   []float64
}

// sharedMemory is where the registration rate is measured a second time
// when $TMPDIR is not on tmpfs: notifyd's default state directory,
// $RUNTIME_DIRECTORY under /run, is on tmpfs on a systemd host, and there a
// file costs a fraction of what it costs on a disk.
const sharedMemory = "/dev/shm"

func measureRegistration(ctx context.Context, l *lab) (*registrationResult, error) {
	if len(plainBody) != 70 {
		return nil, fmt.Errorf("plain body is %d bytes, not 70", len(plainBody))
	}
	qlen, err := readIntFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		return nil, err
	}
	l.Progress("registration rate: starting %d sleepers", fixedWorkers)
	ss, err := l.spawn(ctx, fixedWorkers, sleeperLife)
	if err != nil {
		return nil, err
	}
	defer l.reap(ss...)
	res := &registrationResult{workers: len(ss), dgramQlen: qlen}
	parents := []string{l.Dir}
	if labFS, err := filesystemType(l.Dir); err == nil && labFS != "tmpfs" {
		if shmFS, err := filesystemType(sharedMemory); err == nil && shmFS == "tmpfs" {
			dir, err := os.MkdirTemp(sharedMemory, benchName+"-")
			if err != nil {
				return nil, fmt.Errorf("create a directory on tmpfs: %w", err)
			}
			defer os.RemoveAll(dir)
			parents = append(parents, dir)
		}
	}
	for i, parent := range parents {
		run, err := registerRounds(ctx, l, ss, parent, fmt.Sprintf("register-%d", i+1))
		if err != nil {
			return nil, err
		}
		res.runs = append(res.runs, run)
	}
	return res, nil
}

// registerRounds measures notifyd against the plain loop with both writing
// to directories in parent.
func registerRounds(ctx context.Context, l *lab, ss []*sleeper, parent, name string) (*registrationRun, error) {
	d, err := l.startDaemonIn(ctx, parent, name, "--exit-detection", "pidfd")
	if err != nil {
		return nil, err
	}
	defer d.Stop()
	plainDir := filepath.Join(parent, name+"-plain")
	if err := os.Mkdir(plainDir, 0o700); err != nil {
		return nil, fmt.Errorf("create plain loop directory: %w", err)
	}
	if err := sameFilesystem(d.dir, plainDir); err != nil {
		return nil, err
	}
	fsType, err := filesystemType(plainDir)
	if err != nil {
		return nil, err
	}

	ps := pids(ss)
	ready := messages("READY=1\nPID=%d", ps)
	stopping := messages("STOPPING=1\nPID=%d", ps)
	stateFiles := make([]string, len(ps))
	plainFiles := make([]string, len(ps))
	plainTmps := make([]string, len(ps))
	for i, pid := range ps {
		stateFiles[i] = d.stateFile(pid)
		plainFiles[i] = filepath.Join(plainDir, ".gunicorn.worker."+strconv.Itoa(pid))
		plainTmps[i] = plainFiles[i] + ".tmp"
	}
	c, err := d.dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()

	res := &registrationRun{dir: parent, fsType: fsType}
	for r := range regRounds {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		start := time.Now()
		if err := sendAll(d, c, ready); err != nil {
			return nil, err
		}
		elapsed := time.Since(start)
		if err := allExist(stateFiles); err != nil {
			return nil, fmt.Errorf("round %d, after READY=1 and a barrier: %w", r+1, err)
		}
		if err := checkHealth(d, len(ps)); err != nil {
			return nil, fmt.Errorf("round %d: %w", r+1, err)
		}
		res.notifyd = append(res.notifyd, float64(len(ps))/elapsed.Seconds())
		if err := sendAll(d, c, stopping); err != nil {
			return nil, err
		}
		if err := noneExist(stateFiles); err != nil {
			return nil, fmt.Errorf("round %d, after STOPPING=1 and a barrier: %w", r+1, err)
		}
		if err := checkHealth(d, 0); err != nil {
			return nil, fmt.Errorf("round %d, after STOPPING=1: %w", r+1, err)
		}

		start = time.Now()
		if err := writePlain(plainFiles, plainTmps); err != nil {
			return nil, err
		}
		elapsed = time.Since(start)
		if err := allExist(plainFiles); err != nil {
			return nil, fmt.Errorf("round %d, plain loop: %w", r+1, err)
		}
		res.plain = append(res.plain, float64(len(ps))/elapsed.Seconds())
		for _, p := range plainFiles {
			if err := os.Remove(p); err != nil {
				return nil, fmt.Errorf("remove %s: %w", p, err)
			}
		}
		l.Progress("registration rate on %s: round %d/%d: notifyd %.0f files/s, plain %.0f files/s", fsType, r+1, regRounds, res.notifyd[r], res.plain[r])
	}
	if err := d.Stop(); err != nil {
		return nil, err
	}
	return res, nil
}

// writePlain is the baseline: each file written to a temporary name and
// renamed into place, as notifyd does, with nothing else around it.
func writePlain(finals, tmps []string) error {
	for i, final := range finals {
		fd, err := unix.Open(tmps[i], unix.O_CREAT|unix.O_TRUNC|unix.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("plain loop: open %s: %w", tmps[i], err)
		}
		n, err := unix.Write(fd, plainBody)
		if err == nil && n != len(plainBody) {
			err = io.ErrShortWrite
		}
		if cerr := unix.Close(fd); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("plain loop: write %s: %w", tmps[i], err)
		}
		if err := unix.Rename(tmps[i], final); err != nil {
			return fmt.Errorf("plain loop: rename %s: %w", tmps[i], err)
		}
	}
	return nil
}

func allExist(paths []string) error {
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("state file missing: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
	}
	return nil
}

func noneExist(paths []string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("state file %s still there (lstat: %v)", p, err)
		}
	}
	return nil
}

// sameFilesystem fails unless a and b are on one file system, so that the
// plain loop pays what notifyd pays per file.
func sameFilesystem(a, b string) error {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return fmt.Errorf("stat %s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return fmt.Errorf("stat %s: %w", b, err)
	}
	if sa.Dev != sb.Dev {
		return fmt.Errorf("%s and %s are on different file systems", a, b)
	}
	return nil
}

// filesystemType names the file system dir is on, for the report: file
// creation costs differ a lot between them.
func filesystemType(dir string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "", fmt.Errorf("statfs %s: %w", dir, err)
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/3/4", nil
	case unix.TMPFS_MAGIC:
		return "tmpfs", nil
	case unix.XFS_SUPER_MAGIC:
		return "xfs", nil
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs", nil
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs", nil
	}
	return fmt.Sprintf("a file system with magic %#x", st.Type), nil
}
