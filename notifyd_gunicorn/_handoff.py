"""The hand-over of a master's sockets to the master a USR2 starts.

The old master passes the notify socket, the health socket and the socket
directory's descriptor (and with it the directory's lock) in the variable
HANDOFF: notify=FD,http=FD,dir=FD,master=PID,pid=NOTIFYD_PID. The new master
believes it only once each part proves to be what a parent master hands
over; anything else is a value left over from an older master, or a
forgery, and the descriptors it names are closed.

Standard library only. Nothing here runs at import.
"""

import collections
import os
import socket
import stat

from ._process import Pidfd
from ._sockets import SocketDir

HANDOFF = 'NOTIFYD_GUNICORN_HANDOFF'

# _PID_MAX is the largest pid Linux can give (PID_MAX_LIMIT, 2^22).
_PID_MAX = 1 << 22

# Handoff is what a verified hand-over gives the new master; old_notifyd is
# (pid, master) of the old master's notifyd, or None.
Handoff = collections.namedtuple(
    'Handoff', 'notify http directory old_notifyd')


def encode(sockets, notifyd_pid):
    """Return the value of HANDOFF for the master a USR2 starts, with the
    descriptors it names made inheritable. Runs in the child that becomes
    the new master, so the parent's descriptors are untouched."""
    for sock in (sockets.notify, sockets.http):
        sock.set_inheritable(True)
    os.set_inheritable(sockets.directory.fd, True)
    return 'notify=%d,http=%d,dir=%d,master=%d,pid=%s' % (
        sockets.notify.fileno(), sockets.http.fileno(), sockets.directory.fd,
        os.getppid(), notifyd_pid or '')


def take():
    """Take HANDOFF out of the environment and return its Handoff, or None
    when there is none. Raises ValueError, with the descriptors it names
    closed, when it is not believed."""
    value = os.environ.pop(HANDOFF, None)
    if not value:
        return None
    try:
        fields = dict(part.split('=', 1) for part in value.split(','))
    except ValueError:
        fields = {}
    try:
        return _verify(fields)
    except (KeyError, ValueError, OSError) as err:
        _close_named(fields)
        raise ValueError('ignoring %s=%r: %s; its descriptors are closed'
                         % (HANDOFF, value, err))


def _verify(fields):
    # Each part of a hand-over, once it proves to be what the parent master
    # hands over. Raises ValueError or OSError saying what does not.
    master = int(fields['master'])
    if not 0 < master == os.getppid():
        raise ValueError('master %d is not this process\'s parent' % master)
    if str(master) != os.environ.get('GUNICORN_PID'):
        raise ValueError('master %d is not $GUNICORN_PID' % master)
    notify = _inherited_socket(fields, 'notify', socket.AF_UNIX,
                               socket.SOCK_DGRAM)
    try:
        http = _inherited_socket(fields, 'http', None, socket.SOCK_STREAM)
        try:
            fd = _descriptor(fields, 'dir')
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ValueError('dir=%d is not a directory' % fd)
            directory = SocketDir(fd, os.path.dirname(notify.getsockname()))
            if not directory.owns(notify.getsockname()):
                raise ValueError('notify=%d is not a socket in dir=%d'
                                 % (notify.fileno(), fd))
        except BaseException:
            http.detach()
            raise
    except BaseException:
        notify.detach()
        raise
    for sock in (notify, http):
        sock.set_inheritable(False)
    os.set_inheritable(fd, False)
    pid = int(fields['pid']) if fields.get('pid') else 0
    old_notifyd = (pid, master) if 0 < pid <= _PID_MAX else None
    return Handoff(notify, http, directory, old_notifyd)


def _descriptor(fields, name):
    fd = int(fields[name])
    if fd < 3:
        raise ValueError('%s=%d is a standard stream' % (name, fd))
    return fd


def _inherited_socket(fields, name, family, kind):
    # The socket at the descriptor fields names, when it is of family and
    # kind; a stream socket must be listening. Raises ValueError or OSError.
    fd = _descriptor(fields, name)
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise ValueError('%s=%d is not a socket' % (name, fd))
    sock = socket.socket(fileno=fd)
    try:
        families = (family,) if family else (socket.AF_INET, socket.AF_INET6)
        if sock.family not in families or sock.type != kind:
            raise ValueError('%s=%d is a socket of another kind' % (name, fd))
        if kind == socket.SOCK_STREAM and not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError('%s=%d is not listening' % (name, fd))
        if family == socket.AF_UNIX and not (
                isinstance(sock.getsockname(), str)
                and os.path.isabs(sock.getsockname())):
            raise ValueError('%s=%d is not bound to a path' % (name, fd))
    except BaseException:
        sock.detach()
        raise
    return sock


def _close_named(fields):
    # The descriptors a hand-over that is not believed names, when they are
    # what a hand-over passes: such a value is left over from an older
    # master, whose sockets would otherwise stay open here for good.
    for name in ('notify', 'http', 'dir'):
        try:
            fd = _descriptor(fields, name)
            mode = os.fstat(fd).st_mode
        except (KeyError, ValueError, OSError):
            continue
        if stat.S_ISSOCK(mode) or stat.S_ISDIR(mode):
            os.close(fd)


class OldNotifyd(Pidfd):
    """The old master's notifyd, which the new master stops before it starts
    its own on the same sockets. It is the old master's child, which reaps
    it: the new master holds it by a pidfd only."""

    what = 'old notifyd'

    def __init__(self, pid, master, socket_path):
        """Hold pid once it proves to be a live notifyd that is a child of
        master, running on socket_path; raises OSError or ValueError saying
        what it is not."""
        super().__init__(pid, os.pidfd_open(pid))
        try:
            with open('/proc/%d/stat' % pid, 'rb') as f:
                fields = f.read().rpartition(b')')[2].split()
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
            # Read while the pidfd held the process: had it exited
            # meanwhile, and its pid gone to another, the pidfd would say so
            # now.
            if self.exited():
                raise ProcessLookupError('it has exited')
            if int(fields[1]) != master:
                raise ValueError('it is not a child of the old master '
                                 '(pid %d)' % master)
            want = [b'--socket', os.fsencode(socket_path)]
            if not any(argv[i:i + 2] == want for i in range(len(argv))):
                raise ValueError('it is not a notifyd on %s' % socket_path)
        except BaseException:
            self.close()
            raise

    def await_exit(self, timeout, log):
        """Wait for it to exit, killing it after timeout seconds, and let go
        of it."""
        try:
            super().await_exit(timeout, log)
        finally:
            self.close()
