"""The sd_notify client every notifyd module shares: where the socket is,
and how one message reaches it.

Standard library only. Nothing here runs at import.
"""

import os
import select
import socket
import struct
import time

__all__ = ['DEFAULT_SOCKET_NAME', 'SEND_TIMEOUT', 'credentials',
           'resolve_socket', 'send', 'send_and_wait', 'sockaddr']

# SEND_TIMEOUT bounds one blocking send. A blocking send waits for room in the
# receiver's queue (net.unix.max_dgram_qlen, often 10 datagrams), where a
# non-blocking one could drop a READY while many workers boot at once. One
# second keeps a hung notifyd from stalling a worker's boot or a master's
# SIGCHLD handling for long.
SEND_TIMEOUT = 1.0

DEFAULT_SOCKET_NAME = 'notify.sock'


def resolve_socket(configured=None):
    """Return the address notifyd listens on.

    configured (a setting or an argument) wins, else $NOTIFYD_SOCKET, else
    $RUNTIME_DIRECTORY/notify.sock, else ./notify.sock. $NOTIFY_SOCKET is
    never read: it belongs to systemd. The result is an absolute path, or
    '@name' for an abstract socket.
    """
    address = configured or os.environ.get('NOTIFYD_SOCKET')
    if not address:
        # systemd joins several RuntimeDirectory= entries with ':'.
        runtime = os.environ.get('RUNTIME_DIRECTORY', '').split(':')[0]
        address = os.path.join(runtime or '.', DEFAULT_SOCKET_NAME)
    if address.startswith('@'):
        return address
    return os.path.abspath(address)


def credentials():
    """Return this process's SCM_CREDENTIALS payload: pid, uid, gid."""
    # struct ucred: a signed pid, unsigned uid and gid (a uid may be 2**31
    # or more in a user namespace).
    return struct.pack('iII', os.getpid(), os.getuid(), os.getgid())


def send(address, message, page=None):
    """Send message as one datagram to the notifyd socket at address.

    The datagram carries our own SCM_CREDENTIALS: the kernel attaches none to
    datagrams queued before the receiver set SO_PASSCRED, as happens under
    socket activation. With page (a _page.Page), it carries the page's
    descriptor too. Raises OSError (TimeoutError after SEND_TIMEOUT) when
    the datagram could not be sent.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(SEND_TIMEOUT)
        sock.connect(sockaddr(address))
        sendmsg(sock, message, page)


def sendmsg(sock, message, page=None):
    """Send message on the connected sock, with our credentials and, with
    page, the page's descriptor."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials())]
    if page is not None:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          struct.pack('i', page.fd)))
    sock.sendmsg([message.encode()], ancillary)


def send_and_wait(address, message, timeout=SEND_TIMEOUT):
    """Send message, then wait until notifyd has applied it.

    The wait is a BARRIER=1 with one descriptor, as sd_notify_barrier(3)
    does: notifyd closes it once everything sent before it is applied, so
    the read end sees the hang-up. Raises OSError (TimeoutError when no
    acknowledgement came within timeout seconds).
    """
    cred = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials())
    deadline = time.monotonic() + timeout
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr(address))
            sock.sendmsg([message.encode()], [cred])
            sock.sendmsg([b'BARRIER=1'], [
                cred, (socket.SOL_SOCKET, socket.SCM_RIGHTS,
                       struct.pack('i', w))])
        os.close(w)
        w = None
        poller = select.poll()
        poller.register(r, select.POLLHUP)
        left = deadline - time.monotonic()
        if not poller.poll(max(0, left) * 1000):
            raise TimeoutError('no acknowledgement within %gs' % timeout)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def sockaddr(address):
    """Return address as the socket module takes it ('@name' is abstract)."""
    if address.startswith('@'):
        return '\0' + address[1:]
    return address
