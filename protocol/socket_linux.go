package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Credentials are the sender's pid, uid and gid as the kernel vouches for them
// (SCM_CREDENTIALS).
type Credentials struct {
	PID, UID, GID int
	// PIDFD is a pidfd for the sender itself (SCM_PIDFD, Linux 6.5+), or 0
	// when the kernel sent none. It names the sending process exactly, where
	// PID could already name another one. It is closed with the datagram:
	// keep a dup of it, never the descriptor itself.
	PIDFD int
}

// Datagram is one datagram as it came off the socket.
type Datagram struct {
	Data []byte
	// Cred is nil when the kernel attached no credentials.
	Cred *Credentials
	// FDs are the descriptors that came with the datagram. The reader owns
	// them and must close every one. Server closes them after the handler
	// returns, off its reading goroutine; a descriptor to keep is taken out
	// of FDs first (or set to -1).
	FDs []int
	// pidfd is the SCM_PIDFD descriptor, or 0; it is copied into Cred.
	pidfd int
	// Truncated is set when the datagram or its ancillary data did not fit.
	Truncated, ControlTruncated bool
}

// Close closes every descriptor that came with d.
// The pidfd goes first: closing a barrier's descriptor tells the sender that
// all is done, so it must be the last thing Close does.
func (d *Datagram) Close() {
	if d.pidfd > 0 {
		unix.Close(d.pidfd)
		d.pidfd = 0
	}
	closeFDs(d.FDs)
	d.FDs = nil
}

// maxFDs is how many descriptors one datagram can carry (SCM_MAX_FD).
const maxFDs = 253

// oobSize fits the credentials, the sender's pidfd and a full load of
// descriptors, so the kernel never has to drop one for lack of room.
var oobSize = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(4) + unix.CmsgSpace(4*maxFDs)

// Conn is notifyd's listening datagram socket.
type Conn struct {
	closeOnce sync.Once
	c         *net.UnixConn
	path      string       // file to unlink on Close; empty for abstract or inherited sockets
	cfg       ListenConfig // how the file was made, to make it again
	ino       uint64
	buf       []byte
	oob       []byte
}

// ListenConfig says where and how to create the socket.
type ListenConfig struct {
	// Path is a file system path, or "@name" for an abstract socket.
	Path string
	// Mode is the permission of the socket file.
	Mode fs.FileMode
	// GID is the group of the socket file, or -1 to keep the default.
	GID int
}

// ErrInUse is returned by Listen when another process already listens on the
// path.
var ErrInUse = errors.New("socket is in use by a running process")

// Listen creates the socket described by cfg with SO_PASSCRED set before it is
// bound, so that no datagram can arrive without credentials.
//
// A stale socket file, one nobody listens on, is replaced. A path that holds a
// live listener, a symlink or anything that is not a socket is refused and
// left untouched.
func Listen(cfg ListenConfig) (*Conn, error) {
	abstract := strings.HasPrefix(cfg.Path, "@")
	if !abstract {
		if err := removeStaleSocket(cfg.Path); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("create socket: %w", err)
	}
	if err := setPassCred(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	name := cfg.Path
	if abstract {
		name = "\x00" + cfg.Path[1:]
	}
	// Bind a file of at most 0600, then widen it to Mode once the group is
	// right: the socket is never more open than asked. The mode of the
	// socket's own inode, set before bind, is what bind gives the file (less
	// the umask), so the process-wide umask is left alone and Listen is safe
	// while other goroutines create files.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set mode of socket before bind: %w", err)
	}
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: name})
	if errors.Is(err, unix.EADDRINUSE) {
		unix.Close(fd)
		return nil, fmt.Errorf("socket %s: %w", cfg.Path, ErrInUse)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", cfg.Path, err)
	}
	c := &Conn{}
	if !abstract {
		c.path, c.cfg = cfg.Path, cfg
		if err := c.secure(cfg); err != nil {
			unix.Close(fd)
			os.Remove(cfg.Path)
			return nil, err
		}
	}
	f := os.NewFile(uintptr(fd), cfg.Path)
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		c.unlink()
		return nil, fmt.Errorf("listen %s: %w", cfg.Path, err)
	}
	c.c = nc.(*net.UnixConn)
	return c, nil
}

func (c *Conn) secure(cfg ListenConfig) error {
	if cfg.GID >= 0 {
		if err := os.Lchown(cfg.Path, -1, cfg.GID); err != nil {
			return fmt.Errorf("set group of socket %s: %w", cfg.Path, err)
		}
	}
	// The mode is set through a descriptor of the file itself, never
	// through the path, which another user of a shared directory could
	// have swapped for a symlink to a file of notifyd's.
	fd, err := unix.Open(cfg.Path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set mode of socket %s: %w", cfg.Path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat socket %s: %w", cfg.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("set mode of socket %s: replaced by something else while notifyd set it up", cfg.Path)
	}
	if err := os.Chmod("/proc/self/fd/"+strconv.Itoa(fd), cfg.Mode.Perm()); err != nil {
		return fmt.Errorf("set mode of socket %s: %w", cfg.Path, err)
	}
	c.ino = st.Ino
	return nil
}

// FileConn wraps an inherited datagram socket, as passed by systemd socket
// activation. SO_PASSCRED is set on it; its path is never unlinked.
func FileConn(f *os.File) (*Conn, error) {
	typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_DGRAM {
		return nil, fmt.Errorf("use inherited socket %s: not a datagram socket", f.Name())
	}
	if err := setPassCred(int(f.Fd())); err != nil {
		return nil, err
	}
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("use inherited socket %s: %w", f.Name(), err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("use inherited socket %s: not a Unix datagram socket", f.Name())
	}
	return &Conn{c: uc}, nil
}

// setPassCred asks the kernel to attach the sender's credentials to every
// datagram, and a pidfd for the sender where the kernel can (Linux 6.5+).
func setPassCred(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return fmt.Errorf("set SO_PASSCRED: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSPIDFD, 1) // older kernels: credentials alone
	return nil
}

// removeStaleSocket makes way for a new socket at path, or explains why it
// will not.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("socket path %s exists and is not a socket (%s); refusing to replace it", path, fileKind(fi.Mode()))
	}
	probe, err := net.Dial("unixgram", path)
	if err == nil {
		probe.Close()
		return fmt.Errorf("socket path %s: %w", path, ErrInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check socket path %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	}
	return "a special file"
}

// Read reads the next datagram. The returned Data is valid until the next
// call to Read. The caller must Close the datagram to release its
// descriptors.
func (c *Conn) Read() (Datagram, error) {
	if c.buf == nil {
		c.buf = make([]byte, MaxDatagramSize)
		c.oob = make([]byte, oobSize)
	}
	n, oobn, flags, _, err := c.c.ReadMsgUnix(c.buf, c.oob)
	if err != nil {
		return Datagram{}, err
	}
	d := Datagram{
		Data:             c.buf[:n],
		Truncated:        flags&unix.MSG_TRUNC != 0,
		ControlTruncated: flags&unix.MSG_CTRUNC != 0,
	}
	msgs, err := unix.ParseSocketControlMessage(c.oob[:oobn])
	if err != nil {
		d.ControlTruncated = true
		return d, nil
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_RIGHTS:
			fds, err := unix.ParseUnixRights(&m)
			if err == nil {
				d.FDs = append(d.FDs, fds...)
			}
		case unix.SCM_CREDENTIALS:
			if uc, err := unix.ParseUnixCredentials(&m); err == nil {
				d.Cred = &Credentials{PID: int(uc.Pid), UID: int(uc.Uid), GID: int(uc.Gid)}
			}
		case unix.SCM_PIDFD:
			if len(m.Data) >= 4 {
				d.pidfd = int(int32(binary.NativeEndian.Uint32(m.Data)))
			}
		}
	}
	if d.Cred != nil && d.Cred.PID != 0 {
		d.Cred.PIDFD = d.pidfd
	}
	return d, nil
}

// Close removes the socket's file, if this Conn created it and the file is
// still the one it created, then closes the socket. The file goes first:
// while the socket is open its inode number cannot be reused, so the check
// cannot mistake a newer socket at the same path for this one. Close is
// idempotent.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.unlink()
		err = c.c.Close()
	})
	return err
}

func (c *Conn) unlink() {
	if c.present() {
		os.Remove(c.path)
	}
}

// present reports whether the socket file this Conn created is still at its
// path. It is false once the file has been removed or replaced, and for a
// socket without a file of its own (abstract, or passed by systemd).
func (c *Conn) present() bool {
	if c.path == "" {
		return false
	}
	var st unix.Stat_t
	return unix.Lstat(c.path, &st) == nil && st.Ino == c.ino && st.Mode&unix.S_IFMT == unix.S_IFSOCK
}

// Path is the file system path of the socket file this Conn created, or ""
// for an abstract socket or one passed by systemd.
func (c *Conn) Path() string { return c.path }

// Addr is the socket's address as the user gave it.
func (c *Conn) Addr() string {
	return c.c.LocalAddr().String()
}
