package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// limits are what bounds how many sleeping workers this machine can hold at
// once.
type limits struct {
	pidMax     int    // kernel.pid_max
	threadsMax int    // kernel.threads-max
	tasks      int    // tasks (threads) alive now, from /proc/loadavg
	cgroupRoom int    // pids left under this cgroup's pids.max; -1 for no limit
	nofile     uint64 // RLIMIT_NOFILE soft limit of this process
	nofileMax  uint64 // RLIMIT_NOFILE hard limit
}

// Headroom kept free for notifyd's own threads and descriptors, the go
// command and the rest of the machine.
const (
	pidReserve = 1024
	fdReserve  = 256
	// reservedPids are the low pids the kernel never hands out again after
	// pids wrap around (RESERVED_PIDS in kernel/pid.c).
	reservedPids = 300
	// fixedWorkers is what the idle and registration measurements hold, so
	// the machine must fit at least that many.
	fixedWorkers = 1000
)

func readLimits() (limits, error) {
	var l limits
	var err error
	if l.pidMax, err = readIntFile("/proc/sys/kernel/pid_max"); err != nil {
		return l, err
	}
	if l.threadsMax, err = readIntFile("/proc/sys/kernel/threads-max"); err != nil {
		return l, err
	}
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l, fmt.Errorf("read /proc/loadavg: %w", err)
	}
	// The fourth field is running/total scheduling entities.
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return l, fmt.Errorf("/proc/loadavg %q has no task count", b)
	}
	_, total, _ := strings.Cut(f[3], "/")
	if l.tasks, err = strconv.Atoi(total); err != nil {
		return l, fmt.Errorf("/proc/loadavg task count %q: %w", f[3], err)
	}
	if l.cgroupRoom, err = cgroupPidsRoom(); err != nil {
		return l, err
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return l, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
	}
	l.nofile, l.nofileMax = rl.Cur, rl.Max
	return l, nil
}

// fit returns how many workers the throughput measurement can register,
// at most requested, with a note saying why when it is fewer. Each worker is
// one process, one pidfd in this process (os.Process keeps one per child)
// and one pidfd in notifyd. Go processes raise their soft RLIMIT_NOFILE to
// the hard limit at start, so the hard limit is what counts; if this one's
// soft limit is still short, it is raised to what the run needs and no
// further.
func (l *limits) fit(requested int) (int, string, error) {
	pidRoom := min(l.pidMax-reservedPids, l.threadsMax) - l.tasks - pidReserve
	if l.cgroupRoom >= 0 {
		pidRoom = min(pidRoom, l.cgroupRoom-pidReserve)
	}
	fdRoom := int(min(l.nofileMax, 1<<30)) - fdReserve
	// The idle and registration measurements hold fixedWorkers whatever
	// was requested for the throughput one.
	if min(pidRoom, fdRoom) < fixedWorkers {
		return 0, "", fmt.Errorf("this machine cannot hold %d sleeping workers (room for %d processes and %d descriptors, keeping %d and %d spare): raise kernel.pid_max or RLIMIT_NOFILE",
			fixedWorkers, pidRoom, fdRoom, pidReserve, fdReserve)
	}
	workers := min(requested, pidRoom, fdRoom)
	need := uint64(max(workers, fixedWorkers) + fdReserve)
	if l.nofile < need {
		rl := unix.Rlimit{Cur: need, Max: l.nofileMax}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			return 0, "", fmt.Errorf("raise RLIMIT_NOFILE soft limit from %d to %d: %w", l.nofile, need, err)
		}
		l.nofile = need
	}
	if workers == requested {
		return workers, "", nil
	}
	why := "RLIMIT_NOFILE"
	if pidRoom < fdRoom {
		why = "the free pids"
	}
	return workers, fmt.Sprintf("-workers scaled down from %d to %d to fit %s (pid_max %d, threads-max %d, %d tasks running, RLIMIT_NOFILE hard limit %d)",
		requested, workers, why, l.pidMax, l.threadsMax, l.tasks, l.nofileMax), nil
}

// cgroupPidsRoom reads how many more tasks this process's cgroup allows,
// under cgroup v2 or the v1 pids controller; -1 when there is no limit.
func cgroupPidsRoom() (int, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return -1, nil // no cgroups: nothing to respect
	}
	room := -1
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir = filepath.Join("/sys/fs/cgroup", parts[2])
		case strings.Contains(","+parts[1]+",", ",pids,"):
			dir = filepath.Join("/sys/fs/cgroup/pids", parts[2])
		default:
			continue
		}
		// The limit of the cgroup or of any cgroup above it may bind.
		for ; strings.HasPrefix(dir, "/sys/fs/cgroup"); dir = filepath.Dir(dir) {
			maxText, err := os.ReadFile(filepath.Join(dir, "pids.max"))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return -1, fmt.Errorf("read %s/pids.max: %w", dir, err)
			}
			if strings.TrimSpace(string(maxText)) == "max" {
				continue
			}
			limit, err := strconv.Atoi(strings.TrimSpace(string(maxText)))
			if err != nil {
				return -1, fmt.Errorf("%s/pids.max %q: %w", dir, maxText, err)
			}
			current, err := readIntFile(filepath.Join(dir, "pids.current"))
			if err != nil {
				return -1, err
			}
			if r := limit - current; room < 0 || r < room {
				room = r
			}
		}
	}
	return room, nil
}

func readIntFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return n, nil
}
