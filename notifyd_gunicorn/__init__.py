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

Each ready worker repeats its READY=1 every notifyd_reannounce seconds (10 by
default, less up to 10% of jitter; 0 turns it off), from a daemon thread of
its own, and one second after a send that failed. A notifyd that restarted
without its state files, or lost a READY=1 queued in its socket, so counts
every live worker again within one interval. notifyd takes a repeated READY=1
from a worker it knows for one lookup, and never counts a dead or reused pid.
"""

import importlib
import logging
import os
import random
import socket
import struct
import threading

from ._managed import start

__all__ = ['install', 'resolve_socket', 'send', 'start']

# SEND_TIMEOUT bounds one blocking send. A blocking send waits for room in the
# receiver's queue (net.unix.max_dgram_qlen, often 10 datagrams), where a
# non-blocking one could drop a READY while many workers boot at once. One
# second keeps a hung notifyd from stalling a worker's boot or the master's
# SIGCHLD handling for long.
SEND_TIMEOUT = 1.0

DEFAULT_SOCKET_NAME = 'notify.sock'

# DEFAULT_REANNOUNCE is how often, in seconds, a ready worker repeats its
# READY=1 unless notifyd_reannounce says otherwise. JITTER is the largest
# fraction taken off each interval at random, so that workers booted together
# do not announce together. RETRY is the wait after a failed send; it doubles
# after each failure in a row, up to the interval.
DEFAULT_REANNOUNCE = 10.0
JITTER = 0.1
RETRY = 1.0

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
    interval = reannounce_interval(ns)
    for name, make in _HOOKS.items():
        previous = ns.get(name)
        if getattr(previous, _MARK, False):
            continue
        hook = make(_callable(name, previous), address, interval)
        setattr(hook, _MARK, True)
        ns[name] = hook


def reannounce_interval(ns):
    """Return notifyd_reannounce from ns in seconds; 0 means never.

    Without it in ns, $NOTIFYD_REANNOUNCE is read, as $NOTIFYD_SOCKET is.

    A value that is not a number of seconds, 0 or more, is logged as an
    error and the default is used: a typo must not stop gunicorn.
    """
    value = ns.get('notifyd_reannounce')
    if value is None:
        value = os.environ.get('NOTIFYD_REANNOUNCE', DEFAULT_REANNOUNCE)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < float('inf') or isinstance(value, bool):
        _logger.error('notifyd: notifyd_reannounce %r must be a number of '
                      'seconds, 0 or more; using %g', value,
                      DEFAULT_REANNOUNCE)
        return DEFAULT_REANNOUNCE
    return seconds


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


class _Announcer:
    """Repeats one worker's READY=1 from a daemon thread.

    A send that fails is tried again after RETRY seconds, then after twice
    that, up to the interval. stop() ends the repetition before the worker
    says STOPPING=1, so that no READY=1 follows it.
    """

    def __init__(self, address, pid, interval, log):
        self.address, self.pid, self.interval, self.log = (
            address, pid, interval, log)
        self.lock = threading.Lock()  # held while a READY=1 is on its way
        self.stopped = threading.Event()
        self.failing = False
        self.retry = RETRY

    def announce(self):
        """Send READY=1 now and report whether it went.

        Only the first failure in a row is logged, and the recovery after it.
        """
        if not _notify(self.log, self.address, 'READY=1', self.pid,
                       warn=not self.failing):
            self.failing = True
            return False
        if self.failing:
            self.log.info('notifyd: READY=1 for pid %s reached %s', self.pid,
                          self.address)
        self.failing, self.retry = False, RETRY
        return True

    def start(self, sent):
        if not sent:
            self.failing = True
        if self.interval > 0:
            thread = threading.Thread(target=self._run, daemon=True,
                                      name='notifyd-reannounce')
            thread.start()

    def _next(self):
        if not self.failing:
            return self.interval * (1 - JITTER * random.random())
        wait, self.retry = self.retry, min(self.retry * 2, self.interval)
        return min(wait, self.interval)

    def _run(self):
        while not self.stopped.wait(self._next()):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.announce()

    def stop(self):
        """End the repetition; a READY=1 on its way is let through first."""
        self.stopped.set()
        if self.lock.acquire(timeout=SEND_TIMEOUT):
            self.lock.release()


# _announcer is this worker process's, once post_worker_init has run in it.
_announcer = None


def _post_worker_init(previous, address, interval):
    # An exception from the user's hook propagates: the worker fails to boot,
    # so it must not announce READY.
    def post_worker_init(worker):
        global _announcer
        if previous is not None:
            previous(worker)
        if _announcer is not None:
            _announcer.stop()
        _announcer = _Announcer(address, worker.pid, interval, _log(worker))
        _announcer.start(_announcer.announce())

    return post_worker_init


def _worker_exit(previous, address, interval):
    def worker_exit(server, worker):
        try:
            if previous is not None:
                previous(server, worker)
        finally:
            if _announcer is not None:
                _announcer.stop()
            _notify(_log(server), address, 'STOPPING=1', worker.pid)

    return worker_exit


def _child_exit(previous, address, interval):
    # Runs in the master. A worker that exited cleanly has already sent
    # STOPPING=1 from worker_exit; one that was killed has not.
    def child_exit(server, worker):
        try:
            if previous is not None:
                previous(server, worker)
        finally:
            _notify(_log(server), address, 'STOPPING=1', worker.pid)

    return child_exit


_HOOKS = {
    'post_worker_init': _post_worker_init,
    'worker_exit': _worker_exit,
    'child_exit': _child_exit,
}


def _notify(log, address, state, pid, warn=True):
    """Send state for pid; return whether it went. Never raises."""
    try:
        send(address, '%s\nPID=%d' % (state, pid))
    except OSError as err:
        if warn:
            log.warning('notifyd: could not send %s for pid %s to %s: %s',
                        state, pid, address, err)
        return False
    return True


def _log(owner):
    # owner is the gunicorn worker or arbiter; its log is gunicorn's logger.
    return getattr(owner, 'log', None) or _logger


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
