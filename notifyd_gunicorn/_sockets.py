"""The sockets a gunicorn master holds for its notifyd, and the directory
of the notify socket.

The master binds the health address when the config file is read and holds
it for the whole run, so that a probe that arrives while notifyd restarts
waits in the listen queue instead of being refused. The notify socket lives
in a directory of the master's own (SocketDir), made before the first
worker. Both are passed to notifyd as systemd's socket activation passes
them, and to the master a USR2 starts (see _handoff).

Standard library only. Nothing here runs at import.
"""

import fcntl
import os
import re
import secrets
import socket
import stat
import tempfile

# DIR_NAME is the name of a socket directory: notifyd- and 12 hex digits.
DIR_NAME = re.compile(r'notifyd-[0-9a-f]{12}\Z')
SOCKET_NAME = 'notify.sock'

# Unix socket paths are limited by sun_path (108 bytes with its NUL).
_SUN_PATH_MAX = 107


class Sockets:
    """The health socket and the notify socket of one master."""

    def __init__(self, path, notify=None, http=None, directory=None):
        self.path = path            # the notify socket's path
        self.notify = notify        # the notify socket, once bound
        self.directory = directory  # its SocketDir, once made
        self.http = http            # the held health socket
        # The healthcheck_bind it was bound for; an adopted socket's
        # address until a setting names it.
        self.http_bind = http.getsockname() if http is not None else None
        self.retired_http = None    # the one before a reload changed it

    def bind_http(self, bind):
        """Hold a listening socket on bind, host:port as notifyd --check
        accepted it; the one it replaces is kept in retired_http until
        notifyd has moved (close_retired_http). Raises OSError naming
        healthcheck_bind."""
        if self.http is not None and self._same_address(bind):
            return
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                *_host_port(bind), 0, socket.SOCK_STREAM, 0,
                socket.AI_PASSIVE)[0]
        except socket.gaierror as err:
            raise OSError('healthcheck_bind %r: %s' % (bind, err.strerror))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
        except OSError as err:
            sock.close()
            raise OSError('healthcheck_bind %r: %s' % (bind, err.strerror))
        if self.http is not None:
            self.retired_http = self.http
        self.http, self.http_bind = sock, bind

    def _same_address(self, bind):
        if self.http_bind == bind:
            return True
        if isinstance(self.http_bind, str):
            return False
        # An adopted socket: compare addresses; port 0 keeps any port.
        host, port = _host_port(bind)
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror:
            return False
        held = self.http_bind
        if any(info[4][0] == held[0] and port in (0, held[1])
               for info in infos):
            self.http_bind = bind
            return True
        self.http.close()
        self.http = None
        return False

    def close_retired_http(self):
        """Close the health socket a reload replaced, once notifyd has
        moved: what its notifyd left queued there had no one else to answer
        it."""
        if self.retired_http is not None:
            self.retired_http.close()
            self.retired_http = None

    def bind_notify(self, owner, say):
        """Bind the notify socket in a directory of its own, once. owner is
        (uid, gid) of the workers when a root master hands the socket to
        them, else None. Directories of masters that are gone are removed
        first, each said with say. Raises OSError."""
        if self.notify is not None:
            return
        base, name = os.path.split(os.path.dirname(self.path))
        for gone in sweep(base):
            say('removed %s, left by a master that is gone' % gone)
        directory = SocketDir.make(os.path.join(base, name))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Credentials on every datagram, also those queued while
            # notifyd (re)starts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # The mode the file gets at bind: never more open than 0600.
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(self.path)
            if owner is not None:
                directory.hand_to(*owner)
        except OSError:
            sock.close()
            directory.remove()
            raise
        self.notify, self.directory = sock, directory

    def ready(self):
        """Whether both sockets are there to run notifyd on."""
        return self.notify is not None and self.http is not None

    def fds(self):
        """The descriptors notifyd gets, in LISTEN_FDNAMES order."""
        return [self.notify.fileno(), self.http.fileno()]

    def http_url(self):
        host, port = self.http.getsockname()[:2]
        if ':' in host:
            host = '[%s]' % host
        return 'http://%s:%d/' % (host, port)

    def close(self, remove):
        """Close every socket; remove the directory too when remove."""
        for sock in (self.http, self.notify, self.retired_http):
            if sock is not None:
                sock.close()
        self.http = self.notify = self.retired_http = self.http_bind = None
        if self.directory is not None:
            if remove:
                self.directory.remove()
            self.directory.close()
            self.directory = None

    def close_in_worker(self):
        """In a new worker: it must not hold the health port or notifyd's
        sockets, or a worker orphaned by a killed master would. The master's
        own are untouched."""
        for sock in (self.http, self.notify, self.retired_http):
            if sock is not None:
                sock.close()
        if self.directory is not None:
            self.directory.close()


def _host_port(bind):
    # host:port as notifyd --check accepted it; '' is every address.
    host, _, port = bind.rpartition(':')
    if host.startswith('[') and host.endswith(']'):
        host = host[1:-1]
    return host or None, int(port)


def private_path():
    """The path of a new master's notify socket, in a directory still to be
    made: chosen at config time, when the worker hooks need it, and made
    before the first worker. The name cannot be guessed, and mkdir fails
    rather than use a directory someone else made."""
    base = os.environ.get('RUNTIME_DIRECTORY', '').split(':')[0]
    base = base or tempfile.gettempdir()
    path = os.path.join(os.path.abspath(base),
                        'notifyd-' + secrets.token_hex(6), SOCKET_NAME)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        path = os.path.join('/tmp', 'notifyd-' + secrets.token_hex(6),
                            SOCKET_NAME)
    return path


class SocketDir:
    """The directory of the notify socket, held by a descriptor and a lock.

    The master that makes it holds an exclusive flock on it for its life;
    a USR2 passes the descriptor, and so the lock, to the new master. A
    directory of ours whose lock nobody holds, and whose socket nobody
    reads, belongs to a master that was killed: the next master removes
    it. The directory stays root's when the workers run as another user,
    who reaches the socket through the directory's group, so that they
    cannot swap a file in it for a link. Everything in it is removed
    through the descriptor, never through a path.
    """

    def __init__(self, fd, path):
        self.fd = fd        # O_DIRECTORY descriptor, holding the lock
        self.path = path    # the directory's path

    @classmethod
    def make(cls, path):
        """Make the directory path, locked; raises OSError."""
        os.mkdir(path, 0o700)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError:
            os.rmdir(path)
            raise
        try:
            # Another master's sweep may have taken the lock of the empty
            # directory between mkdir and here, to remove it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:
                raise FileNotFoundError('%s was removed as it was made'
                                        % path)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, path)

    def owns(self, socket_path):
        """Whether socket_path names a socket in this directory."""
        try:
            held = os.fstat(self.fd)
            there = os.stat(os.path.dirname(socket_path),
                            follow_symlinks=False)
            sock = os.stat(SOCKET_NAME, dir_fd=self.fd,
                           follow_symlinks=False)
        except OSError:
            return False
        return (os.path.basename(socket_path) == SOCKET_NAME
                and (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
                and stat.S_ISSOCK(sock.st_mode))

    def hand_to(self, uid, gid):
        """Let the workers' user reach the socket in it, and no one else.

        Only the socket changes owner, without following a link, and the
        directory only its group: the workers' user can write nothing in
        it."""
        os.chown(SOCKET_NAME, uid, gid, dir_fd=self.fd,
                 follow_symlinks=False)
        os.fchown(self.fd, -1, gid)
        os.fchmod(self.fd, 0o710)

    def remove(self):
        """Remove the socket and the directory, then let go of it."""
        try:
            os.unlink(SOCKET_NAME, dir_fd=self.fd)
        except OSError:
            pass
        _rmdir_held(self.path, self.fd)
        self.close()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _rmdir_held(path, fd):
    # Removes the directory at path only while it is still the one fd holds.
    try:
        held = os.fstat(fd)
        there = os.stat(path, follow_symlinks=False)
        if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
            os.rmdir(path)
    except OSError:
        pass


def sweep(base):
    """Remove the socket directories in base of masters that are gone.

    A directory is removed only when it is this user's, nobody holds its
    lock, and nobody reads its socket; another user's, or a live master's,
    is left alone. Returns the paths removed."""
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not DIR_NAME.match(name):
            continue
        path = os.path.join(base, name)
        try:
            st = os.stat(path, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _socket_read(path):
                continue
            for entry in os.listdir(fd):
                os.unlink(entry, dir_fd=fd)
            _rmdir_held(path, fd)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _socket_read(directory):
    # Whether some process still holds the socket in directory: a master of
    # an older notifyd_gunicorn took no lock.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(os.path.join(directory, SOCKET_NAME))
    except OSError:
        return False
    finally:
        probe.close()
    return True
