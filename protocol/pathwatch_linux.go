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

// ErrDirGone is returned by PathWatch.Wait when the watched file's directory
// itself has been removed or renamed.
var ErrDirGone = errors.New("the socket's directory was removed or renamed")

// PathWatch learns from inotify when a file is removed from its directory,
// renamed away or replaced, such as a socket file deleted by a cleanup job.
// It waits in the runtime's poller, so it costs nothing while nothing
// happens.
type PathWatch struct {
	f    *os.File
	name string
	buf  []byte
}

// WatchPath starts watching path's directory for changes to the entry path.
func WatchPath(path string) (*PathWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch %s: inotify: %w", path, err)
	}
	dir := filepath.Dir(path)
	mask := uint32(unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR)
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch directory %s: %w", dir, err)
	}
	return &PathWatch{
		f:    os.NewFile(uintptr(fd), "inotify "+dir),
		name: filepath.Base(path),
		buf:  make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1)),
	}, nil
}

// Wait blocks until a file of the watched name is removed, renamed or
// created, or the directory itself goes (ErrDirGone), or Close is called
// (os.ErrClosed). The caller checks what is at the path now: the event may
// be about an older file of the same name, or about its own new socket.
func (w *PathWatch) Wait() error {
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

// scan reports whether the events in b name the watched file.
func (w *PathWatch) scan(b []byte) (bool, error) {
	hit := false
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			return hit, errors.New("inotify: short event")
		}
		if ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0 {
			return hit, ErrDirGone
		}
		name := b[unix.SizeofInotifyEvent:end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if string(name) == w.name {
			hit = true
		}
		b = b[end:]
	}
	return hit, nil
}

// Close stops the watch; a Wait in progress returns os.ErrClosed.
func (w *PathWatch) Close() error { return w.f.Close() }
