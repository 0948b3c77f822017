"""gunicorn hooks that tell notifyd when workers are ready and when they stop.

Usage, at the end of a gunicorn config file:

    import notifyd_gunicorn
    notifyd_socket = '/run/myapp/notify.sock'
    notifyd_gunicorn.install(globals())

install() chains after the post_worker_init, worker_exit and child_exit hooks
that the file already defines, so it must come after them: a hook defined
after the call replaces ours, and that worker event is then never sent.

The socket is notifyd_socket, else $NOTIFYD_SOCKET, else
$RUNTIME_DIRECTORY/notify.sock, else ./notify.sock; '@name' is an abstract
socket. $NOTIFY_SOCKET is never used: it belongs to systemd. For the same
reason, do not point gunicorn's own NOTIFY_SOCKET at notifyd, or the master
would register itself as a worker. The address is fixed when install() runs,
before gunicorn applies --env and raw_env, so NOTIFYD_SOCKET given there is
not seen; set it in gunicorn's own environment or as notifyd_socket.

A HUP reload runs the config file again into a fresh namespace, so install()
runs again and the new hooks replace the old ones. That is harmless. For a
moment, old and new workers are both ready.

The hooks never raise because of notifyd. If notifyd is down or too slow, the
hook logs one warning and gunicorn carries on.
"""

import importlib
import logging
import os
import socket
import struct

from ._managed import start

__all__ = ['install', 'resolve_socket', 'send', 'start']

# SEND_TIMEOUT bounds one blocking send. A blocking send waits for room in the
# receiver's queue (net.unix.max_dgram_qlen, often 10 datagrams), where a
# non-blocking one could drop a READY while many workers boot at once. One
# second keeps a hung notifyd from stalling a worker's boot or the master's
# SIGCHLD handling for long.
SEND_TIMEOUT = 1.0

DEFAULT_SOCKET_NAME = 'notify.sock'

# _MARK is set on the hooks install() makes, so a second install() on the
# same namespace recognises them and does not wrap them again.
_MARK = '_notifyd_hook'

_logger = logging.getLogger(__name__)


def install(ns):
    """Add notifyd's hooks to the gunicorn config namespace ns (globals()).

    Each hook runs after the one ns already holds under the same name, if
    any. Calling install() again on the same namespace changes nothing.
    """
    address = resolve_socket(ns)
    for name, make in _HOOKS.items():
        previous = ns.get(name)
        if getattr(previous, _MARK, False):
            continue
        hook = make(_callable(name, previous), address)
        setattr(hook, _MARK, True)
        ns[name] = hook


def resolve_socket(ns):
    """Return the address notifyd listens on, as configured for ns.

    The result is an absolute path, or '@name' for an abstract socket.
    """
    address = ns.get('notifyd_socket') or os.environ.get('NOTIFYD_SOCKET')
    if not address:
        # systemd joins several RuntimeDirectory= entries with ':'.
        runtime = os.environ.get('RUNTIME_DIRECTORY', '').split(':')[0]
        address = os.path.join(runtime or '.', DEFAULT_SOCKET_NAME)
    if address.startswith('@'):
        return address
    return os.path.abspath(address)


def send(address, message):
    """Send message as one datagram to the notifyd socket at address.

    The datagram carries our own SCM_CREDENTIALS: the kernel attaches none to
    datagrams queued before the receiver set SO_PASSCRED, as happens under
    socket activation. Raises OSError (TimeoutError after SEND_TIMEOUT) when
    the datagram could not be sent.
    """
    credentials = struct.pack('3i', os.getpid(), os.getuid(), os.getgid())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(SEND_TIMEOUT)
        sock.connect(_sockaddr(address))
        sock.sendmsg(
            [message.encode()],
            [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)],
        )


def _post_worker_init(previous, address):
    # An exception from the user's hook propagates: the worker fails to boot,
    # so it must not announce READY.
    def post_worker_init(worker):
        if previous is not None:
            previous(worker)
        _notify(worker, address, 'READY=1', worker.pid)

    return post_worker_init


def _worker_exit(previous, address):
    def worker_exit(server, worker):
        try:
            if previous is not None:
                previous(server, worker)
        finally:
            _notify(server, address, 'STOPPING=1', worker.pid)

    return worker_exit


def _child_exit(previous, address):
    # Runs in the master. A worker that exited cleanly has already sent
    # STOPPING=1 from worker_exit; one that was killed has not.
    def child_exit(server, worker):
        try:
            if previous is not None:
                previous(server, worker)
        finally:
            _notify(server, address, 'STOPPING=1', worker.pid)

    return child_exit


_HOOKS = {
    'post_worker_init': _post_worker_init,
    'worker_exit': _worker_exit,
    'child_exit': _child_exit,
}


def _notify(owner, address, state, pid):
    # owner is the gunicorn worker or arbiter; its log is gunicorn's logger.
    try:
        send(address, '%s\nPID=%d' % (state, pid))
    except OSError as err:
        log = getattr(owner, 'log', None) or _logger
        log.warning('notifyd: could not send %s for pid %s to %s: %s',
                    state, pid, address, err)


def _callable(name, hook):
    # gunicorn also accepts a hook given as 'package.module.function'.
    if hook is None or callable(hook):
        return hook
    if isinstance(hook, str) and '.' in hook:
        module, _, attr = hook.rpartition('.')
        return getattr(importlib.import_module(module), attr)
    raise TypeError('%s must be a callable or a "module.function" string, '
                    'not %r' % (name, hook))


def _sockaddr(address):
    if address.startswith('@'):
        return '\0' + address[1:]
    return address
