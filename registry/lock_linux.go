package registry

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the file a notifyd locks in its state directory for its whole
// life, so that a second notifyd never adopts, counts or deletes the first
// one's workers. It holds the holder's pid, for the second one's error. Its
// name holds no digits, so no state file name pattern can match it.
const lockFile = ".notifyd.lock"

// ErrDirInUse is New's error when another live notifyd holds the state
// directory.
var ErrDirInUse = errors.New("state directory is in use by another notifyd")

// lockDir takes the state directory's lock: flock on lockFile, held until
// the descriptor it returns is closed (by the kernel, however notifyd
// ends). A lock file another user made is replaced by one of notifyd's
// own, so no one else can hold notifyd off. It returns -1 and no error
// when the directory is read-only and holds no lock file: notifyd then
// runs unlocked, as it runs with a directory it cannot write.
func lockDir(dir string) (int, error) {
	path := filepath.Join(dir, lockFile)
	fd, err := openLock(path)
	if errors.Is(err, unix.ENOENT) {
		return -1, nil // a read-only directory without a lock file
	}
	if err != nil {
		return -1, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := lockHolder(fd)
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return -1, fmt.Errorf("%w: %s is locked by %s", ErrDirInUse, dir, holder)
		}
		return -1, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	// The pid goes in through a descriptor of its own, closed at once: the
	// lock's is read-only, so that the file system can still be remounted
	// read-only under notifyd. Best effort: the pid only names the holder.
	if w, err := openRegular(path, unix.O_WRONLY|unix.O_TRUNC); err == nil {
		unix.Write(w, []byte(strconv.Itoa(os.Getpid())+"\n"))
		unix.Close(w)
	}
	return fd, nil
}

// openLock opens the lock file for reading, creating it, or replacing what
// is there when it is not a regular file of notifyd's user or root. In a
// directory notifyd cannot write, it opens the lock file that is there:
// flock needs no more.
func openLock(path string) (int, error) {
	fd, err := openOwn(path, unix.O_RDONLY)
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) {
		fd, err = openRegular(path, unix.O_RDONLY)
	}
	return fd, err
}

// openOwn opens path in the state directory, creating it: a regular file
// of notifyd's user or root. Whatever else is at the name (a FIFO, a
// symlink, another user's file) is removed first, which the directory's
// owner may do even in a sticky directory.
func openOwn(path string, flags int) (int, error) {
	for try := 0; ; try++ {
		fd, err := openRegular(path, flags|unix.O_CREAT)
		if err == nil {
			var st unix.Stat_t
			if err = unix.Fstat(fd, &st); err == nil && ownFile(st) {
				return fd, nil
			}
			unix.Close(fd)
			if err == nil {
				err = fmt.Errorf("%s belongs to uid %d", path, st.Uid)
			}
		} else if !errors.Is(err, errNotRegular) && !errors.Is(err, unix.ELOOP) {
			return -1, err
		}
		if try > 0 {
			return -1, err
		}
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("replace %s, which is not notifyd's: %w", path, err)
		}
	}
}

// ownFile reports whether a file belongs to notifyd's user or root: a file
// no other user can have made.
func ownFile(st unix.Stat_t) bool {
	return st.Uid == 0 || int(st.Uid) == os.Geteuid()
}

// lockHolder names the notifyd that holds the lock, from the pid it wrote.
func lockHolder(fd int) string {
	b := make([]byte, 32)
	n, _ := unix.Pread(fd, b, 0)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b[:max(n, 0)]))); err == nil && pid > 0 {
		return "notifyd pid " + strconv.Itoa(pid)
	}
	return "another notifyd"
}
