"""gunicorn hooks that tell notifyd when workers are ready and when they stop.

Usage, at the end of a gunicorn config file:

    import notifyd_gunicorn
    notifyd_socket = '/run/myapp/notify.sock'
    notifyd_gunicorn.install(globals())

install() chains after the post_worker_init, worker_exit, child_exit,
pre_request and post_request hooks that the file already defines, so it must
come after them: a hook defined after the call replaces ours, and that worker
event is then never sent.

The socket is notifyd_socket, else $NOTIFYD_SOCKET, else
$RUNTIME_DIRECTORY/notify.sock, else ./notify.sock; '@name' is an abstract
socket. $NOTIFY_SOCKET is never used: it belongs to systemd. For the same
reason, do not point gunicorn's own NOTIFY_SOCKET at notifyd, or the master
would register itself as a worker. The address is fixed when install() runs,
before gunicorn applies --env and raw_env, so NOTIFYD_SOCKET given there is
not seen; set it in gunicorn's own environment or as notifyd_socket.

A HUP reload runs the config file again into a fresh namespace, so install()
runs again and the new hooks replace the old ones. That is harmless. gunicorn
starts the new workers and stops the old ones at once, long before the new
ones are ready, so the on_reload hook tells notifyd first: the master sends
RELOADING=1 about itself and waits (up to SEND_TIMEOUT) until notifyd has
applied it. notifyd then keeps the old workers' count in its answer until the
new workers are ready, or its reload grace ends. notifyd accepts this only
from root or its own user; from any other, it is rejected and logged there,
and the reload shows as workers going and coming. A TTIN or TTOU is no reload.

The hooks never raise because of notifyd. If notifyd is down or too slow, the
hook logs one warning and gunicorn carries on.

Each ready worker repeats its READY=1 every notifyd_reannounce seconds (10 by
default, less up to 10% of jitter; 0 turns the repetition off), from a daemon
thread of its own, and again after a send that failed: at once, then after
one second, doubling up to the interval. A notifyd that restarted without its
state files, or lost a READY=1 queued in its socket, so counts every live
worker again within one interval. notifyd takes a repeated READY=1 from a
worker it knows for one lookup, and never counts a dead or reused pid.

pre_request and post_request report the worker's activity: requests in flight
now (with gthread, the requests its threads serve at once), requests finished
and microseconds spent with at least one request in flight since it booted.
They write it into the worker's activity page (notifyd_gunicorn._page), a
sealed memfd passed to notifyd with every READY=1, and make no system call:
notifyd reads the page when it is asked. Where a memfd cannot be made, the
worker logs one warning and reports by datagrams instead: each hook then
costs one non-blocking send on a socket the worker keeps connected, and
nothing at all while that socket is down. Those values are absolute, so a
datagram dropped on a full queue costs nothing: the next one, or the next
READY=1, which carries them too, tells the truth. A failed send never delays
the request: it only wakes the worker's thread, which connects again and
re-announces.
"""

import _socket
import importlib
import inspect
import logging
import os
import random
import select
import socket
import struct
import threading
import time

from . import _page
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

# _COUNTED is set on a request that pre_request counted, to the reporter that
# counted it, so that post_request ends only what pre_request began.
_COUNTED = '_notifyd_counted'

_logger = logging.getLogger(__name__)


def install(ns, _reload=True):
    """Add notifyd's hooks to the gunicorn config namespace ns (globals()).

    Each hook runs after the one ns already holds under the same name, if
    any. Calling install() again on the same namespace changes nothing.
    """
    address = resolve_socket(ns)
    interval = reannounce_interval(ns)
    hooks = dict(_HOOKS)
    if _reload:  # managed mode sends it once notifyd matches the new settings
        hooks['on_reload'] = _on_reload
    for name, make in hooks.items():
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


def reload_instance(log, address):
    """Tell notifyd at address that the gunicorn master reloads: RELOADING=1
    about the calling process, then wait until notifyd has applied it.

    The wait is a BARRIER=1, bounded by SEND_TIMEOUT, so that the old
    workers gunicorn stops next are counted as a reload's, never as an
    outage. Returns whether notifyd acknowledged it; never raises: a
    failure is logged as one warning and the reload goes on.
    """
    try:
        _send_and_wait(address, 'RELOADING=1\nMONOTONIC_USEC=%d'
                       % (time.monotonic_ns() // 1000))
    except OSError as err:
        log.warning('notifyd: could not send %s for the master to %s: %s',
                    'RELOADING=1', address, err)
        return False
    return True


def _send_and_wait(address, message):
    # BARRIER=1 with one descriptor, as sd_notify_barrier(3) does: notifyd
    # closes it once everything sent before it is applied, so the read end
    # sees the hang-up.
    credentials = struct.pack('3i', os.getpid(), os.getuid(), os.getgid())
    cred = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)
    deadline = time.monotonic() + SEND_TIMEOUT
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(_sockaddr(address))
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
            raise TimeoutError('no acknowledgement within %gs'
                               % SEND_TIMEOUT)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


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
        sock.connect(_sockaddr(address))
        _sendmsg(sock, message, page)


def _sendmsg(sock, message, page):
    credentials = (os.getpid(), os.getuid(), os.getgid())
    if page is not None:
        _page.send_ready(sock, message, page, credentials)
        return
    sock.sendmsg(
        [message.encode()],
        [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
          struct.pack('3i', *credentials))],
    )


class _Announcer:
    """Reports one worker to notifyd: its READY=1, and its activity.

    READY=1 is sent once as the worker boots, with a blocking send, then
    repeated from a daemon thread every interval. Each READY=1 carries the
    worker's activity page, and the request hooks call begin() and end(),
    which only write into it. Without a page (no memfd on this system), they
    update the activity and send it with one
    non-blocking send on a socket the worker keeps connected. The repeated
    READY=1 goes through that socket too, with the activity: every snapshot
    is taken and sent under self.lock, so notifyd receives them in the order
    they were taken, and no counter ever seems to go backwards.

    A send that fails drops the socket and wakes the thread; until the thread
    has connected again and re-announced, the hooks send nothing. The thread
    re-announces at once (at most once a RETRY), and after a failure of its
    own tries again after RETRY seconds, then after twice that, up to the
    interval. stop() ends all of it before the worker says STOPPING=1, so
    that nothing follows it.
    """

    def __init__(self, address, pid, interval, log):
        self.address, self.pid, self.interval, self.log = (
            address, pid, interval, log)
        # Held while the activity changes or a datagram is on its way; only
        # non-blocking calls are made under it.
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.wakeup = threading.Event()
        self.failing = False
        self.retry = RETRY
        self.last = 0.0  # time.monotonic() of the last re-announcement
        self.sock = None  # connected to notifyd, or None
        self.credentials = struct.pack('3i', os.getpid(), os.getuid(),
                                       os.getgid())
        self.in_flight = 0
        self.requests = 0
        self.busy_ns = 0  # busy time up to busy_since
        self.busy_since = 0  # time.monotonic_ns() when in_flight left 0
        try:
            self.page = _page.Page()
        except OSError as err:
            self.page = None
            _logger.info('notifyd: no activity page for pid %s (%s); '
                         'reporting activity by datagrams', pid, err)
        else:
            # The request hooks go straight to the page.
            self.begin, self.end = self.page.begin, self.page.end

    def announce(self):
        """Send READY=1 now, as the worker boots; report whether it went.

        The send blocks for up to SEND_TIMEOUT, so that many workers booting
        at once do not lose a READY=1 to a short queue. Then the socket the
        hooks use is connected.
        """
        with self.lock:
            message = self._ready()
        try:
            send(self.address, message, self.page)
        except OSError as err:
            return self._went(err)
        with self.lock:
            if self.sock is None and not self.stopped.is_set():
                try:
                    self._connect()
                except OSError:
                    pass  # the next re-announcement connects
        return self._went(None)

    def start(self, sent):
        if not sent:
            self.failing = True
        thread = threading.Thread(target=self._run, daemon=True,
                                  name='notifyd-reannounce')
        thread.start()

    def begin(self):
        """Count a request that has begun, and report it."""
        with self.lock:
            if self.in_flight == 0:
                self.busy_since = time.monotonic_ns()
            self.in_flight += 1
            failed = self._push()
        if failed:
            self.wakeup.set()

    def end(self):
        """Count a request that has ended, and report it."""
        with self.lock:
            self.in_flight -= 1
            self.requests += 1
            if self.in_flight == 0:
                self.busy_ns += time.monotonic_ns() - self.busy_since
            failed = self._push()
        if failed:
            self.wakeup.set()

    def stop(self):
        """End the repetition and the reports; one on its way goes first."""
        self.stopped.set()
        self.wakeup.set()
        if self.lock.acquire(timeout=SEND_TIMEOUT):
            try:
                self._disconnect()
            finally:
                self.lock.release()

    def _activity(self):
        # The caller holds self.lock. Busy time includes the request in
        # flight so far, so a long request shows in every re-announcement.
        busy = self.busy_ns
        if self.in_flight:
            busy += time.monotonic_ns() - self.busy_since
        return ('X_NOTIFYD_IN_FLIGHT=%d\nX_NOTIFYD_REQUESTS=%d\n'
                'X_NOTIFYD_BUSY_USEC=%d' % (self.in_flight, self.requests,
                                            busy // 1000))

    def _ready(self):
        # The caller holds self.lock.
        if self.page is not None:
            return 'READY=1\nPID=%d\n%s' % (self.pid, _page.MESSAGE)
        return 'READY=1\nPID=%d\n%s' % (self.pid, self._activity())

    def _push(self):
        """Send the activity if connected; return whether a send failed.

        The caller holds self.lock. This is the request's whole cost: one
        system call, or none while the socket is down.
        """
        if self.sock is None:
            return False
        try:
            self._sendmsg(self._activity())
        except OSError:
            self._disconnect()
            return True
        return False

    def _sendmsg(self, message):
        self.sock.sendmsg(
            [message.encode()],
            [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, self.credentials)])

    def _connect(self):
        # The caller holds self.lock. The socket is the C module's own, which
        # gevent and eventlet leave alone, and non-blocking: a send on it
        # never waits and never yields to another greenlet.
        sock = _socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(_sockaddr(self.address))
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def _disconnect(self):
        # The caller holds self.lock.
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _reannounce(self):
        with self.lock:
            if self.stopped.is_set():
                return
            self.last = time.monotonic()
            try:
                if self.sock is None:
                    self._connect()
                _sendmsg(self.sock, self._ready(), self.page)
                err = None
            except OSError as e:
                self._disconnect()
                err = e
        self._went(err)

    def _went(self, err):
        """Note how a READY=1 fared, and return whether it went.

        Only the first failure in a row is logged, and the recovery after it.
        """
        if err is not None:
            if not self.failing:
                self.log.warning('notifyd: could not send %s for pid %s to '
                                 '%s: %s', 'READY=1', self.pid, self.address,
                                 err)
            self.failing = True
            return False
        if self.failing:
            self.log.info('notifyd: READY=1 for pid %s reached %s', self.pid,
                          self.address)
        self.failing, self.retry = False, RETRY
        return True

    def _next(self):
        """Return how long to wait before the next READY=1; None is never.

        With the repetition off (an interval of 0), only a failure brings
        one, retried up to every DEFAULT_REANNOUNCE seconds.
        """
        longest = self.interval or DEFAULT_REANNOUNCE
        if self.failing:
            wait, self.retry = self.retry, min(self.retry * 2, longest)
            return min(wait, longest)
        if not self.interval:
            return None
        return self.interval * (1 - JITTER * random.random())

    def _run(self):
        while True:
            woken = self.wakeup.wait(self._next())
            if self.stopped.is_set():
                return
            self.wakeup.clear()
            if woken:
                # A hook's send failed: re-announce now, but not more often
                # than every RETRY seconds.
                pause = self.last + RETRY - time.monotonic()
                if pause > 0 and self.stopped.wait(pause):
                    return
            self._reannounce()


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


def _pre_request(previous, address, interval):
    def pre_request(worker, req):
        try:
            if previous is not None:
                previous(worker, req)
        finally:
            _begin(req)

    return pre_request


def _post_request(previous, address, interval):
    arity = _post_request_arity(previous)

    # gunicorn calls post_request even when pre_request raised, so the
    # request that pre_request counted always ends here.
    def post_request(worker, req, environ, resp):
        try:
            if previous is not None:
                previous(*(worker, req, environ, resp)[:arity])
        finally:
            _end(req)

    return post_request


def _on_reload(previous, address, interval):
    # Runs in the master at a HUP, before gunicorn starts the new workers.
    def on_reload(server):
        try:
            if previous is not None:
                previous(server)
        finally:
            reload_instance(_log(server), address)

    return on_reload


_HOOKS = {
    'post_worker_init': _post_worker_init,
    'worker_exit': _worker_exit,
    'child_exit': _child_exit,
    'pre_request': _pre_request,
    'post_request': _post_request,
}


def _begin(req):
    """Count req as begun in this worker. Never raises."""
    reporter = _announcer
    if reporter is None:
        return  # not a worker that our post_worker_init booted
    try:
        setattr(req, _COUNTED, reporter)
    except Exception:
        return  # a request that cannot be marked is not counted at all
    reporter.begin()


def _end(req):
    """Count req as ended, if _begin counted it. Never raises."""
    try:
        reporter = getattr(req, _COUNTED, None)
        if reporter is None:
            return
        delattr(req, _COUNTED)
    except Exception:
        return
    reporter.end()


def _post_request_arity(hook):
    # gunicorn takes a post_request of 2, 3 or 4 arguments and calls it with
    # as many; it checks ours, so we check the user's.
    if hook is None:
        return 4
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return 4  # a builtin without a signature: trust it
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 4
    arity = sum(1 for p in params
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if arity not in (2, 3, 4):
        raise TypeError('post_request must take 2, 3 or 4 arguments '
                        '(worker, req, environ, resp), not %d' % arity)
    return arity


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


def _notify_instance(log, address, message):
    """Send the master's message about the instance; return whether it went.
    Never raises."""
    try:
        send(address, message)
    except OSError as err:
        log.warning('notifyd: could not send %s to %s: %s', message, address,
                    err)
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
