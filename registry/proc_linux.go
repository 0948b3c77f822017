package registry

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// procInfo is what /proc says about a process.
type procInfo struct {
	// startTime is field 22 of /proc/<pid>/stat: clock ticks since boot. With
	// the pid it names one process for the life of the machine.
	startTime uint64
	zombie    bool
}

// errGone means there is no live process: none exists under the pid, or
// only a zombie. The registry says "exited" only of a worker it had
// registered (the drop reason), and "gone" of a pid without a process.
var errGone = errors.New("process is gone")

// readProc reads /proc/<pid>/stat. It returns errGone for a pid with no
// process or with a zombie (or dead) one.
func readProc(pid int) (procInfo, error) {
	var buf [512]byte
	b, err := readProcFile(pid, "stat", buf[:])
	if err != nil {
		return procInfo{}, err
	}
	info, err := parseStat(b)
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	if info.zombie {
		return info, errGone
	}
	return info, nil
}

// parseStat reads the state (field 3) and start time (field 22). The command
// name (field 2) may hold spaces and parentheses, so fields are counted from
// the last ')'. It does not allocate: it runs for every new worker.
func parseStat(b []byte) (procInfo, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procInfo{}, errors.New("no command name")
	}
	rest := b[i+2:] // starts at field 3
	state := rest[0]
	for range 19 { // on to field 22
		var ok bool
		if _, rest, ok = bytes.Cut(rest, []byte(" ")); !ok {
			return procInfo{}, errors.New("too few fields")
		}
	}
	rest, _, _ = bytes.Cut(rest, []byte(" "))
	st, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
	if err != nil {
		return procInfo{}, fmt.Errorf("start time: %w", err)
	}
	return procInfo{startTime: st, zombie: state == 'Z' || state == 'X' || state == 'x'}, nil
}

// realUID reads the real uid of pid from /proc/<pid>/status.
func realUID(pid int) (int, error) { return statusField(pid, "Uid") }

// isProcess reports whether pid names a process rather than one of the
// other threads of a process, which /proc shows under their own ids too.
func isProcess(pid int) (bool, error) {
	tgid, err := statusField(pid, "Tgid")
	return tgid == pid, err
}

// ownPidNamespace names notifyd's pid namespace, as the link
// /proc/self/ns/pid reads ("pid:[4026531836]"); empty where it cannot be read.
var ownPidNamespace = func() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}()

// inOwnPidNamespace reports whether pid lives in notifyd's pid namespace,
// where a PID= number means what it says. A process that has gone counts as
// living there: with no sender left to translate for, PID= can only be taken
// as written. It costs one readlink, against the open, read and close of the
// much larger /proc/<pid>/status; known is false when the link cannot be
// read (another user's process, for a notifyd that is not root), and the
// caller must read NSpid instead.
func inOwnPidNamespace(pid int) (same, known bool) {
	if ownPidNamespace == "" {
		return false, false
	}
	var buf [64]byte
	n, err := unix.Readlink("/proc/"+strconv.Itoa(pid)+"/ns/pid", buf[:])
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH):
		return true, true
	case err != nil:
		return false, false
	}
	return string(buf[:n]) == ownPidNamespace, true
}

// innermostPID returns pid's number in its own pid namespace, the last field
// of the NSpid line of /proc/<pid>/status, and whether that namespace is a
// nested one (then the two numbers differ in meaning, if not in value).
func innermostPID(pid int) (int, bool, error) {
	var buf [4096]byte
	b, err := readProcFile(pid, "status", buf[:])
	if err != nil {
		return 0, false, err
	}
	_, rest, ok := bytes.Cut(b, []byte("\nNSpid:"))
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	fields := bytes.Fields(line)
	if !ok || len(fields) == 0 {
		return pid, false, nil // a kernel without NSpid: no nesting to see
	}
	inner, err := strconv.Atoi(string(fields[len(fields)-1]))
	return inner, len(fields) > 1, err
}

// statusField reads the first number of one line of /proc/<pid>/status.
func statusField(pid int, key string) (int, error) {
	var buf [4096]byte
	b, err := readProcFile(pid, "status", buf[:])
	if err != nil {
		return 0, err
	}
	_, rest, ok := bytes.Cut(b, []byte("\n"+key+":"))
	fields := bytes.Fields(rest)
	if !ok || len(fields) == 0 {
		return 0, fmt.Errorf("read /proc/%d/status: no %s line", pid, key)
	}
	return strconv.Atoi(string(fields[0]))
}

// readProcFile reads /proc/<pid>/<name> into buf, in one read. It returns
// errGone when the process does not exist, or has been reaped meanwhile.
func readProcFile(pid int, name string, buf []byte) ([]byte, error) {
	b, err := readSmall("/proc/"+strconv.Itoa(pid)+"/"+name, buf)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return nil, errGone
	}
	return b, err
}

// readSmall reads a small file in one read, without allocating.
func readSmall(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	return buf[:n], nil
}

// alive reports whether pid is still the process that started at startTime,
// using kill(0) and /proc: the sweep's check where pidfds are not available.
func alive(pid int, startTime uint64) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false
	}
	info, err := readProc(pid)
	return err == nil && info.startTime == startTime
}
