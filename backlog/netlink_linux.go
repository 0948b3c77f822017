package backlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The sock_diag wire format, from the kernel's uapi headers
// linux/sock_diag.h, linux/inet_diag.h and linux/unix_diag.h. The request
// and message structs are encoded by hand, in host byte order except for
// the ports, which are big-endian.
const (
	// tcpListen is TCP_LISTEN (include/net/tcp_states.h). Unix sockets use
	// the TCP state numbers too, so it selects Unix listeners as well.
	tcpListen = 10

	sizeofInetDiagReqV2 = 56 // family, protocol, ext, pad, states, inet_diag_sockid
	sizeofInetDiagMsg   = 72 // family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode
	sizeofUnixDiagReq   = 24 // family, protocol, pad, states, ino, show, cookie
	sizeofUnixDiagMsg   = 16 // family, type, state, pad, ino, cookie

	inetDiagInfo      = 2  // INET_DIAG_INFO: struct tcp_info
	inetDiagSKMemInfo = 7  // INET_DIAG_SKMEMINFO: u32[SK_MEMINFO_VARS]
	inetDiagSKV6Only  = 11 // INET_DIAG_SKV6ONLY: u8, sent for every AF_INET6 listener

	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE: a filter program after the request
	inetDiagBCSGE       = 2 // INET_DIAG_BC_S_GE: local port >= the next op's "no"
	inetDiagBCSLE       = 3 // INET_DIAG_BC_S_LE: local port <= the next op's "no"

	skMemInfoDrops = 8 // SK_MEMINFO_DROPS: sk_drops, which a full accept queue counts

	// tcpiLastDataRecv is the offset of tcpi_last_data_recv in struct
	// tcp_info: milliseconds since the connection last received data, or
	// since its handshake completed when it has received none.
	tcpiLastDataRecv = 52

	// The TCP states a connection waiting in an accept queue can be in:
	// established, or close-wait once its client has given up and closed.
	tcpEstablished = 1
	tcpCloseWait   = 8

	udiagShowName  = 0x01 // UDIAG_SHOW_NAME
	udiagShowVFS   = 0x02 // UDIAG_SHOW_VFS
	udiagShowIcons = 0x08 // UDIAG_SHOW_ICONS
	udiagShowRQLen = 0x10 // UDIAG_SHOW_RQLEN

	unixDiagName  = 0 // UNIX_DIAG_NAME: the bound address, sun_path bytes
	unixDiagVFS   = 1 // UNIX_DIAG_VFS: {ino, dev} of the socket file
	unixDiagIcons = 3 // UNIX_DIAG_ICONS: u32 inodes of the connections waiting for accept()
	unixDiagRQLen = 4 // UNIX_DIAG_RQLEN: {rqueue, wqueue}

	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an
	// attribute type.
	nlaTypeMask = 0x3fff

	// diagBufSize fits the largest message the kernel sends a netlink
	// reader: dumps are capped at 32 KiB less skb overhead.
	diagBufSize = 32 << 10

	// diagTimeout bounds each wait for the kernel. A dump is answered at
	// once; the timeout is there so that a caller can never hang on it.
	diagTimeout = 2 // seconds
)

// diagConn is a NETLINK_SOCK_DIAG socket, used for one Read and closed.
type diagConn struct {
	fd  int
	seq uint32
	buf *[diagBufSize]byte
}

// diagBufs keeps receive buffers between reads: allocating and zeroing a
// fresh 32 KiB buffer for every read nearly doubled its cost.
var diagBufs = sync.Pool{New: func() any { return new([diagBufSize]byte) }}

// openDiag opens a sock_diag socket.
func openDiag() (*diagConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	tv := unix.Timeval{Sec: diagTimeout}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt SO_RCVTIMEO", err)
	}
	return &diagConn{fd: fd, buf: diagBufs.Get().(*[diagBufSize]byte)}, nil
}

func (c *diagConn) Close() error {
	diagBufs.Put(c.buf)
	c.buf = nil
	return unix.Close(c.fd)
}

// dumpTCP returns the TCP listeners of family, unix.AF_INET or
// unix.AF_INET6, as inet_diag reports them.
func (c *diagConn) dumpTCP(family int) ([]tcpListener, error) {
	req := make([]byte, sizeofInetDiagReqV2)
	req[0] = byte(family)
	req[1] = unix.IPPROTO_TCP
	req[2] = 1 << (inetDiagSKMemInfo - 1)
	binary.NativeEndian.PutUint32(req[4:], 1<<tcpListen)
	var ls []tcpListener
	err := c.dump(req, func(msg []byte) error {
		l, ok, err := parseInetDiagMsg(msg)
		if ok {
			ls = append(ls, l)
		}
		return err
	})
	return ls, err
}

// parseInetDiagMsg decodes an inet_diag_msg. ok is false for a socket that
// is not a listener.
func parseInetDiagMsg(msg []byte) (l tcpListener, ok bool, err error) {
	if len(msg) < sizeofInetDiagMsg {
		return l, false, errors.New("short inet_diag_msg")
	}
	if msg[1] != tcpListen {
		return l, false, nil
	}
	switch msg[0] {
	case unix.AF_INET:
		l.ip = netip.AddrFrom4([4]byte(msg[8:12]))
	case unix.AF_INET6:
		l.ip = netip.AddrFrom16([16]byte(msg[8:24]))
	default:
		return l, false, fmt.Errorf("inet_diag_msg of address family %d", msg[0])
	}
	l.port = binary.BigEndian.Uint16(msg[4:6])
	// For a listener the kernel puts the accept queue in idiag_rqueue
	// (sk_ack_backlog) and its limit in idiag_wqueue (sk_max_ack_backlog).
	l.queued = binary.NativeEndian.Uint32(msg[56:60])
	l.limit = binary.NativeEndian.Uint32(msg[60:64])
	err = eachAttr(msg[sizeofInetDiagMsg:], func(typ uint16, data []byte) {
		switch {
		case typ == inetDiagSKV6Only && len(data) >= 1:
			l.v6only = data[0] != 0
		case typ == inetDiagSKMemInfo && len(data) >= 4*(skMemInfoDrops+1):
			l.drops = binary.NativeEndian.Uint32(data[4*skMemInfoDrops:])
		}
	})
	return l, true, err
}

// waiting is a TCP connection that no process has accepted yet.
type waiting struct {
	ip  netip.Addr // its local address, which the client connected to
	age uint32     // milliseconds since it last received data
}

// dumpWaiting returns the connections of family to local port that wait in
// an accept queue: established or close-wait, and with no inode, since a
// socket gets its inode when accept(2) gives it a file. A filter program
// keeps the kernel from sending any connection of another port, and the
// state mask any connection that is closing.
func (c *diagConn) dumpWaiting(family int, port uint16) ([]waiting, error) {
	const opSize = 4 // struct inet_diag_bc_op: code, yes, no (u16)
	// Two comparisons, each an op and an op whose "no" holds the port:
	// jumping past the end of the program rejects the socket, landing
	// exactly on its end accepts it (inet_diag_bc_run).
	prog := make([]byte, 4*opSize)
	ne := binary.NativeEndian
	prog[0], prog[1] = inetDiagBCSGE, 2*opSize
	ne.PutUint16(prog[2:], 5*opSize)
	ne.PutUint16(prog[6:], port)
	prog[8], prog[9] = inetDiagBCSLE, 2*opSize
	ne.PutUint16(prog[10:], 3*opSize)
	ne.PutUint16(prog[14:], port)

	req := make([]byte, sizeofInetDiagReqV2+unix.SizeofRtAttr+len(prog))
	req[0] = byte(family)
	req[1] = unix.IPPROTO_TCP
	req[2] = 1 << (inetDiagInfo - 1)
	ne.PutUint32(req[4:], 1<<tcpEstablished|1<<tcpCloseWait)
	attr := req[sizeofInetDiagReqV2:]
	ne.PutUint16(attr[0:], uint16(unix.SizeofRtAttr+len(prog)))
	ne.PutUint16(attr[2:], inetDiagReqBytecode)
	copy(attr[unix.SizeofRtAttr:], prog)

	var ws []waiting
	err := c.dump(req, func(msg []byte) error {
		if len(msg) < sizeofInetDiagMsg {
			return errors.New("short inet_diag_msg")
		}
		if ne.Uint32(msg[68:72]) != 0 || binary.BigEndian.Uint16(msg[4:6]) != port {
			return nil
		}
		w := waiting{}
		switch msg[0] {
		case unix.AF_INET:
			w.ip = netip.AddrFrom4([4]byte(msg[8:12]))
		case unix.AF_INET6:
			w.ip = netip.AddrFrom16([16]byte(msg[8:24])).Unmap()
		default:
			return nil
		}
		err := eachAttr(msg[sizeofInetDiagMsg:], func(typ uint16, data []byte) {
			if typ == inetDiagInfo && len(data) >= tcpiLastDataRecv+4 {
				w.age = ne.Uint32(data[tcpiLastDataRecv:])
			}
		})
		ws = append(ws, w)
		return err
	})
	return ws, err
}

// dumpUnix returns the Unix listeners that are bound to a path. Listeners
// with an abstract name are left out: no Addr can name them.
func (c *diagConn) dumpUnix() ([]unixListener, error) {
	req := make([]byte, sizeofUnixDiagReq)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], 1<<tcpListen)
	binary.NativeEndian.PutUint32(req[12:], udiagShowName|udiagShowVFS|udiagShowRQLen|udiagShowIcons)
	var ls []unixListener
	err := c.dump(req, func(msg []byte) error {
		l, err := parseUnixDiagMsg(msg)
		if err == nil && l.path != "" {
			ls = append(ls, l)
		}
		return err
	})
	return ls, err
}

// parseUnixDiagMsg decodes a unix_diag_msg and its attributes. The path is
// empty for a socket that is not a listener or whose name is abstract.
func parseUnixDiagMsg(msg []byte) (unixListener, error) {
	var l unixListener
	if len(msg) < sizeofUnixDiagMsg {
		return l, errors.New("short unix_diag_msg")
	}
	if msg[2] != tcpListen {
		return l, nil
	}
	l.ino = binary.NativeEndian.Uint32(msg[4:8])
	err := eachAttr(msg[sizeofUnixDiagMsg:], func(typ uint16, data []byte) {
		ne := binary.NativeEndian
		switch {
		case typ == unixDiagName && len(data) > 0 && data[0] != 0:
			// A path name comes with its terminating NUL; an abstract
			// name starts with a NUL and is left out.
			if i := bytes.IndexByte(data, 0); i >= 0 {
				data = data[:i]
			}
			l.path = string(data)
		case typ == unixDiagVFS && len(data) >= 8:
			l.vfsIno = ne.Uint32(data[0:4])
			l.vfsDev = ne.Uint32(data[4:8])
		case typ == unixDiagIcons:
			for ; len(data) >= 4; data = data[4:] {
				l.waiting = append(l.waiting, ne.Uint32(data))
			}
		case typ == unixDiagRQLen && len(data) >= 8:
			// For a listener: {connections waiting for accept(), backlog}.
			l.queued = ne.Uint32(data[0:4])
			l.limit = ne.Uint32(data[4:8])
		}
	})
	return l, err
}

// eachAttr calls fn for every netlink attribute (struct rtattr) in b.
func eachAttr(b []byte, fn func(typ uint16, data []byte)) error {
	for len(b) >= unix.SizeofRtAttr {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		if n < unix.SizeofRtAttr || n > len(b) {
			return errors.New("malformed netlink attribute")
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[unix.SizeofRtAttr:n])
		b = b[min(align4(n), len(b)):]
	}
	return nil
}

func align4(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// dump sends one SOCK_DIAG_BY_FAMILY dump request with payload req and
// calls fn with the payload of every answer until the kernel says done.
func (c *diagConn) dump(req []byte, fn func(msg []byte) error) error {
	c.seq++
	ne := binary.NativeEndian
	out := make([]byte, unix.NLMSG_HDRLEN+len(req))
	ne.PutUint32(out[0:4], uint32(len(out)))
	ne.PutUint16(out[4:6], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(out[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(out[8:12], c.seq)
	copy(out[unix.NLMSG_HDRLEN:], req)
	if err := unix.Sendto(c.fd, out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto", err)
	}
	for {
		n, _, flags, _, err := unix.Recvmsg(c.fd, c.buf[:], nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return fmt.Errorf("no answer from the kernel within %ds", diagTimeout)
		}
		if err != nil {
			return os.NewSyscallError("recvmsg", err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return errors.New("netlink answer larger than its buffer")
		}
		for b := c.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			size := int(ne.Uint32(b[0:4]))
			if size < unix.NLMSG_HDRLEN || size > len(b) {
				return errors.New("malformed netlink message")
			}
			typ, seq, data := ne.Uint16(b[4:6]), ne.Uint32(b[8:12]), b[unix.NLMSG_HDRLEN:size]
			b = b[min(align4(size), len(b)):]
			if seq != c.seq {
				continue
			}
			switch typ {
			case unix.NLMSG_DONE:
				// A dump that fails half-way says so in its last message.
				if len(data) >= 4 {
					if e := int32(ne.Uint32(data)); e < 0 {
						return unix.Errno(-e)
					}
				}
				return nil
			case unix.NLMSG_ERROR:
				if len(data) < 4 {
					return errors.New("short netlink error message")
				}
				if e := int32(ne.Uint32(data)); e < 0 {
					return unix.Errno(-e)
				}
			case unix.SOCK_DIAG_BY_FAMILY:
				if err := fn(data); err != nil {
					return err
				}
			}
		}
	}
}

// refused reports whether err means this process may not, or cannot, use
// sock_diag at all (a seccomp or LSM policy, a kernel without the diag
// modules, a sandbox without netlink), as opposed to a failure of one read.
func refused(err error) bool {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case unix.EPERM, unix.EACCES, unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT,
		unix.ESOCKTNOSUPPORT, unix.EOPNOTSUPP, unix.ENOENT, unix.ENOSYS:
		return true
	}
	return false
}
