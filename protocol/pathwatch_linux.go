package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errDirGone is returned by pathWatch.Arm and Wait when the watched file's
// directory itself has been removed or renamed.
var errDirGone = errors.New("the socket's directory was removed or renamed")

// The inotify masks of a pathWatch.
const (
	// fileMask is for the file at the path: it is unlinked or replaced
	// (the link count changes: IN_ATTRIB), renamed away, or freed.
	fileMask = unix.IN_ATTRIB | unix.IN_MOVE_SELF | unix.IN_DELETE_SELF | unix.IN_DONT_FOLLOW
	// dirSelfMask is for the directory while the file is there: only the
	// directory's own removal or rename, so that other files coming and
	// going beside the socket, such as notifyd's state files, never wake
	// the watch.
	dirSelfMask = unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	// dirEntryMask adds every change of an entry, for while the path is
	// empty: then a file of the watched name may appear.
	dirEntryMask = dirSelfMask | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_ATTRIB
)

// pathWatch learns from inotify when the file at a path is removed, renamed
// away or replaced, such as a socket file deleted by a cleanup job. While
// there is a file at the path it watches that file, and of the directory
// only its removal or rename; it watches the directory's entries only while
// the path is empty. It waits in the runtime's poller, so it costs nothing
// while nothing happens.
type pathWatch struct {
	f      *os.File
	path   string
	dir    string
	name   string
	fileWD int // watch of the file at the path, -1 when there is none
	dirWD  int // watch of the directory, -1 before the first Arm
	buf    []byte
}

// watchPath prepares a watch of path. Nothing is watched until Arm.
func watchPath(path string) (*pathWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch %s: inotify: %w", path, err)
	}
	return &pathWatch{
		f:      os.NewFile(uintptr(fd), "inotify "+path),
		path:   path,
		dir:    filepath.Dir(path),
		name:   filepath.Base(path),
		fileWD: -1,
		dirWD:  -1,
		buf:    make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1)),
	}, nil
}

// Arm points the watch at what is at the path now: the file, or the
// directory's entries when the path is empty. Call it before checking the
// path, and Wait after: a change after Arm is never missed.
func (w *pathWatch) Arm() error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	// Control keeps the descriptor open while it runs, should Close come.
	if cerr := rc.Control(func(fd uintptr) { err = w.arm(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}

func (w *pathWatch) arm(fd int) error {
	fileWD, err := unix.InotifyAddWatch(fd, w.path, fileMask)
	dirMask := uint32(dirSelfMask)
	switch {
	case errors.Is(err, unix.ENOENT):
		fileWD, dirMask = -1, dirEntryMask
	case errors.Is(err, unix.ENOTDIR):
		return errDirGone
	case err != nil:
		return fmt.Errorf("watch %s: %w", w.path, err)
	}
	dirWD, err := unix.InotifyAddWatch(fd, w.dir, dirMask)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return errDirGone
	}
	if err != nil {
		return fmt.Errorf("watch directory %s: %w", w.dir, err)
	}
	if w.fileWD >= 0 && w.fileWD != fileWD {
		// Its IN_IGNORED, and any event still queued for it, are skipped.
		unix.InotifyRmWatch(fd, uint32(w.fileWD))
	}
	w.fileWD, w.dirWD = fileWD, dirWD
	return nil
}

// Wait blocks until the watched file is removed, renamed or replaced, or
// its attributes change; or, while the path is empty, an entry of the
// watched name comes or goes. It returns errDirGone when the directory
// itself goes, and os.ErrClosed once Close is called. The caller checks
// what is at the path now, and calls Arm again before the next Wait.
func (w *pathWatch) Wait() error {
	for {
		n, err := w.f.Read(w.buf)
		if err != nil {
			return err
		}
		if hit, err := w.scan(w.buf[:n]); hit || err != nil {
			return err
		}
	}
}

// scan reports whether the events in b concern the path.
func (w *pathWatch) scan(b []byte) (bool, error) {
	hit := false
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			return hit, errors.New("inotify: short event")
		}
		name := b[unix.SizeofInotifyEvent:end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		switch wd := int(ev.Wd); {
		case wd == w.dirWD && ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
			return hit, errDirGone
		case wd == w.dirWD:
			hit = hit || string(name) == w.name
		case wd == w.fileWD:
			hit = true
		}
		b = b[end:]
	}
	return hit, nil
}

// Close stops the watch; a Wait in progress returns os.ErrClosed.
func (w *pathWatch) Close() error { return w.f.Close() }
