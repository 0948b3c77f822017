//go:build linux

package registry

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/protocol"
)

// tmpSuffix marks a state file that is being written. A file of that name
// left behind by a crash is removed at the next start.
const tmpSuffix = ".tmp"

// drainFile marks a drained instance. It holds no digits, so no state file
// name pattern can match it.
const drainFile = ".notifyd.draining"

// setDrainMark creates or removes the drain mark.
func (s stateFiles) setDrainMark(on bool) error {
	path := filepath.Join(s.dir, drainFile)
	if !on {
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove drain mark %s: %w", path, err)
		}
		return nil
	}
	fd, err := openOwn(path, unix.O_RDONLY)
	if err != nil {
		return fmt.Errorf("write drain mark %s: %w", path, err)
	}
	return unix.Close(fd)
}

// stateFileMode is every state file's mode: readers such as a gunicorn
// master running as another user read them.
const stateFileMode = 0o644

// errNotRegular is openRegular's answer for a name that holds a FIFO, a
// device, a socket or a directory.
var errNotRegular = errors.New("not a regular file")

// openRegular opens path in the state directory, which other users may be
// able to write, so that nothing they put there can make notifyd block or
// write elsewhere: it never follows a symlink, never waits for a FIFO's
// other end (O_NONBLOCK), and refuses anything but a regular file. The
// descriptor it returns is blocking again.
func openRegular(path string, flags int) (int, error) {
	fd, err := unix.Open(path, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, errNotRegular
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func (s stateFiles) drainMarked() bool {
	var st unix.Stat_t
	return unix.Lstat(filepath.Join(s.dir, drainFile), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && ownFile(st)
}

// stateFiles names, writes and removes the per-pid state files: dir joined
// with prefix, the pid in decimal, and suffix.
type stateFiles struct {
	dir, prefix, suffix string
}

// ErrFilenamePath is wrapped by ValidateFilename when a pattern names a
// path: the directory is the registry's Dir, never part of the name.
var ErrFilenamePath = errors.New("must be a file name without '/'")

// ValidateFilename checks a state file name pattern: exactly one {} for the
// pid and no path separator.
func ValidateFilename(pattern string) error {
	if strings.Count(pattern, "{}") != 1 {
		return fmt.Errorf("must contain exactly one {} placeholder for the pid")
	}
	if strings.ContainsRune(pattern, '/') {
		return ErrFilenamePath
	}
	if strings.HasSuffix(pattern, tmpSuffix) {
		return fmt.Errorf("must not end in %s, which marks a state file being written", tmpSuffix)
	}
	if strings.ContainsAny(strings.Replace(pattern, "{}", "", 1), "{}\x00") {
		return fmt.Errorf("must not contain braces other than the one {} placeholder")
	}
	return nil
}

func newStateFiles(dir, pattern string) (stateFiles, error) {
	if err := ValidateFilename(pattern); err != nil {
		return stateFiles{}, fmt.Errorf("state file name %q: %w", pattern, err)
	}
	prefix, suffix, _ := strings.Cut(pattern, "{}")
	return stateFiles{dir: dir, prefix: prefix, suffix: suffix}, nil
}

func (s stateFiles) path(pid int) string {
	return filepath.Join(s.dir, s.prefix+strconv.Itoa(pid)+s.suffix)
}

// match returns the pid a file name stands for, and whether it is a state
// file at all (tmp is set for one left half-written).
func (s stateFiles) match(name string) (pid int, tmp, ok bool) {
	if base, found := strings.CutSuffix(name, tmpSuffix); found {
		pid, _, ok = s.match(base)
		return pid, true, ok
	}
	digits, found := strings.CutPrefix(name, s.prefix)
	if !found {
		return 0, false, false
	}
	if digits, found = strings.CutSuffix(digits, s.suffix); !found {
		return 0, false, false
	}
	if strings.HasPrefix(digits, "0") {
		return 0, false, false // not a name notifyd writes
	}
	pid, err := protocol.ParsePID(digits)
	return pid, false, err == nil
}

// write replaces the state file of w in one rename, so a reader sees the old
// file or the new one and never a part. There is no fsync: the files describe
// live processes, and after a crash of the machine none of them is left.
//
// The temporary name is removed first and created anew with O_EXCL, so the
// file written is always a new regular file of notifyd's own, whatever
// another user left under that name (a FIFO, a symlink); and a write that
// fails removes it again.
func (s stateFiles) write(w *Worker) error {
	final := s.path(w.PID)
	tmp := final + tmpSuffix
	if err := unix.Unlink(tmp); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("write state file %s: %w", tmp, err)
	}
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, stateFileMode)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			unix.Unlink(tmp) // a name someone made in between
		}
		return fmt.Errorf("write state file %s: %w", tmp, err)
	}
	// The mode is set outright: open(2) takes the umask away from it, and
	// reading the umask means setting it, which races with every other
	// goroutine that creates a file.
	err = unix.Fchmod(fd, stateFileMode)
	if err == nil {
		err = writeAll(fd, encodeState(w))
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Rename(tmp, final)
	}
	if err != nil {
		unix.Unlink(tmp)
		return fmt.Errorf("write state file %s: %w", final, err)
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// remove deletes pid's state file. A directory in its place was never one of
// notifyd's files, and is left alone without complaint.
func (s stateFiles) remove(pid int) error {
	err := unix.Unlink(s.path(pid))
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("remove state file %s: %w", s.path(pid), err)
	}
	return nil
}

// encodeState writes a state file's KEY=VALUE lines.
func encodeState(w *Worker) []byte {
	b := make([]byte, 0, 128)
	b = append(b, "PID="...)
	b = strconv.AppendInt(b, int64(w.PID), 10)
	b = append(b, "\nSTARTTIME="...)
	b = strconv.AppendUint(b, w.StartTime, 10)
	b = append(b, "\nREADY_AT="...)
	b = w.ReadyAt.UTC().AppendFormat(b, time.RFC3339Nano)
	if w.Status != "" {
		b = append(b, "\nSTATUS="...)
		b = append(b, w.Status...)
	}
	if w.WatchdogUSec != 0 {
		b = append(b, "\nWATCHDOG_USEC="...)
		b = strconv.AppendUint(b, w.WatchdogUSec, 10)
	}
	return append(b, '\n')
}

// savedState is what a state file says. An empty file, as the seed package
// wrote them, says only "this pid, start time unknown".
type savedState struct {
	pid          int // 0 when the file does not say
	startTime    uint64
	readyAt      time.Time
	status       string
	watchdogUSec uint64
}

func decodeState(b []byte) (savedState, error) {
	var st savedState
	for line := range strings.SplitSeq(string(b), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return st, fmt.Errorf("line %q is not KEY=VALUE", line)
		}
		var err error
		switch k {
		case "PID":
			st.pid, err = strconv.Atoi(v)
		case "STARTTIME":
			st.startTime, err = strconv.ParseUint(v, 10, 64)
		case "READY_AT":
			st.readyAt, err = time.Parse(time.RFC3339Nano, v)
		case "STATUS":
			st.status = v
		case "WATCHDOG_USEC":
			st.watchdogUSec, err = protocol.ParseWatchdogUSec(v)
		}
		if err != nil {
			return st, fmt.Errorf("%s: %w", k, err)
		}
	}
	return st, nil
}

// readState reads one state file, refusing to follow a symlink, to wait
// for a FIFO, or to read anything but a regular file. It returns the uid
// that owns the file too.
func readState(path string) (savedState, int, error) {
	fd, err := openRegular(path, unix.O_RDONLY)
	if err != nil {
		return savedState{}, -1, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return savedState{}, -1, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile))
	if err != nil {
		return savedState{}, -1, err
	}
	saved, err := decodeState(b)
	return saved, int(st.Uid), err
}

// maxStateFile bounds what recovery reads of one file: a state file holds a
// STATUS of at most one datagram and a few short lines.
const maxStateFile = 8 << 10
