package backlog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// procListeners reads the TCP listeners of family, unix.AF_INET or
// unix.AF_INET6, from /proc/net/tcp or /proc/net/tcp6: the fallback for a
// process that may not use sock_diag.
//
// The file shows less than inet_diag does. For a listener its rx_queue
// column is the accept queue (sk_ack_backlog), but its tx_queue column is
// write_seq - snd_una, which is always 0 for a listener: the limit is not
// there, so limit is 0. Nor does it say whether an IPv6 listener is
// IPV6_V6ONLY; v6only is false for all of them.
func procListeners(family int) ([]tcpListener, error) {
	name := "/proc/net/tcp"
	if family == unix.AF_INET6 {
		name = "/proc/net/tcp6"
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ls, err := parseProcNetTCP(f, family)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return ls, nil
}

// The states in /proc/net/tcp, in hex (include/net/tcp_states.h).
const (
	procStateListen = "0A" // TCP_LISTEN
	procStateClose  = "07" // TCP_CLOSE
)

// parseProcNetTCP parses the lines of /proc/net/tcp or /proc/net/tcp6:
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when ...
//	 0: 0100007F:1F40 00000000:0000 0A 00000000:00000005 00:00000000 ...
//
// Addresses are the raw 32-bit words of the address printed as host-order
// numbers; ports are plain hex. The kernel lists every listener before any
// other socket, so parsing stops at the first line of the connected sockets
// and never reads the rest of what can be a large file. A listener that is
// closing can show as CLOSE before it leaves the listener list, so a CLOSE
// line does not end it.
func parseProcNetTCP(r io.Reader, family int) ([]tcpListener, error) {
	sc := bufio.NewScanner(r)
	sc.Scan() // the header
	var ls []tcpListener
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 5 {
			return nil, fmt.Errorf("line %q: too few fields", sc.Bytes())
		}
		switch string(fields[3]) {
		case procStateListen:
		case procStateClose:
			continue
		default:
			return ls, nil
		}
		ip, port, err := parseProcAddr(fields[1], family)
		if err != nil {
			return nil, fmt.Errorf("local address %q: %w", fields[1], err)
		}
		_, rx, ok := bytes.Cut(fields[4], []byte(":"))
		if !ok {
			return nil, fmt.Errorf("queues %q: want tx:rx", fields[4])
		}
		queued, err := strconv.ParseUint(string(rx), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("rx_queue %q: %w", rx, err)
		}
		ls = append(ls, tcpListener{ip: ip, port: port, queued: uint32(queued)})
	}
	return ls, sc.Err()
}

// parseProcAddr parses "0100007F:1F40" (IPv4) or 32 hex digits and a port
// (IPv6).
func parseProcAddr(b []byte, family int) (netip.Addr, uint16, error) {
	hexIP, hexPort, ok := bytes.Cut(b, []byte(":"))
	if !ok {
		return netip.Addr{}, 0, errors.New("want address:port")
	}
	port, err := strconv.ParseUint(string(hexPort), 16, 16)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	size := 4
	if family == unix.AF_INET6 {
		size = 16
	}
	if len(hexIP) != 2*size {
		return netip.Addr{}, 0, fmt.Errorf("want %d hex digits", 2*size)
	}
	var raw [16]byte
	for i := 0; i < size; i += 4 {
		// Each word is printed as a number, so its bytes come out in
		// reverse on a little-endian machine: decode the number, then
		// store it back the way the kernel held it.
		var word [4]byte
		if _, err := hex.Decode(word[:], hexIP[2*i:2*i+8]); err != nil {
			return netip.Addr{}, 0, err
		}
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(word[:]))
	}
	if size == 4 {
		return netip.AddrFrom4([4]byte(raw[:4])), uint16(port), nil
	}
	return netip.AddrFrom16(raw), uint16(port), nil
}
