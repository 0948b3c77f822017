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
They write it into the worker's activity page, a memfd the worker passed to
notifyd with its READY=1, which notifyd reads only when asked: no system call
on a request's path. Without a page (no memfd on the system, or a heartbeat
deadline, whose WATCHDOG=1 travels with each request), each costs one
non-blocking send on a socket the worker keeps connected; the values are
absolute, so a datagram dropped on a full queue costs nothing, and a failed
send never delays the request.
"""

import inspect
import logging
import time

from notifyd import _reporter
from notifyd._client import SEND_TIMEOUT, resolve_socket as _resolve
from notifyd._client import send, send_and_wait
from notifyd._reporter import notify as _notify

from ._chain import _callable
from ._managed import start

__all__ = ['install', 'resolve_socket', 'send', 'start']

# The socket, the sending and the Reporter (READY=1, its repetition and the
# activity) are the notifyd package's, shared with notifyd.asgi and
# notifyd.celery; this module adds what is gunicorn's: its hooks.

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
    return _reporter.reannounce_interval(ns.get('notifyd_reannounce'),
                                        'notifyd_reannounce', _logger)


def resolve_socket(ns):
    """Return the address notifyd listens on, as configured for ns.

    The result is an absolute path, or '@name' for an abstract socket.
    """
    return _resolve(ns.get('notifyd_socket'))


def reload_instance(log, address):
    """Tell notifyd at address that the gunicorn master reloads: RELOADING=1
    about the calling process, then wait until notifyd has applied it.

    The wait is a BARRIER=1, bounded by SEND_TIMEOUT, so that the old
    workers gunicorn stops next are counted as a reload's, never as an
    outage. Returns whether notifyd acknowledged it; never raises: a
    failure is logged as one warning and the reload goes on.
    """
    try:
        send_and_wait(address, 'RELOADING=1\nMONOTONIC_USEC=%d'
                      % (time.monotonic_ns() // 1000), SEND_TIMEOUT)
    except OSError as err:
        log.warning('notifyd: could not send %s for the master to %s: %s',
                    'RELOADING=1', address, err)
        return False
    return True


# _announcer is this worker process's Reporter, once post_worker_init has run
# in it. The notifyd package knows it too (notifyd._reporter.current()), so
# that notifyd.asgi under UvicornWorker reports through it rather than
# announcing the worker a second time.
_announcer = None


def _post_worker_init(previous, address, interval):
    # An exception from the user's hook propagates: the worker fails to boot,
    # so it must not announce READY.
    def post_worker_init(worker):
        global _announcer
        if previous is not None:
            previous(worker)
        _announcer = _reporter.boot(address, worker.pid, interval,
                                    _log(worker))

    return post_worker_init


def _stopping(previous, address, interval):
    # worker_exit runs in a worker that exits cleanly, child_exit in the
    # master for every worker, so that a killed worker is reported too: both
    # say STOPPING=1 for the worker. Only a worker has a reporter to stop
    # first, so that no READY=1 follows.
    def stopping(server, worker):
        if _announcer is not None:
            _announcer.stop()
        _notify(_log(server), address, 'STOPPING=1', worker.pid)

    return _after(previous, stopping)


# pre_request and post_request run on every request, so they call the
# file's own hook themselves: through _after, they cost another Python call
# each, 60 ns a request.

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
        reload_instance(_log(server), address)

    return _after(previous, on_reload)


def _after(previous, ours):
    """Return a hook that runs previous, the file's own hook when there is
    one, then ours, with gunicorn's arguments, even when previous raised:
    its error reaches gunicorn as it would without notifyd. The hook takes
    the arguments ours takes, as gunicorn checks."""
    def hook(*args):
        try:
            if previous is not None:
                previous(*args)
        finally:
            ours(*args)

    hook.__signature__ = inspect.signature(ours)
    hook.__name__ = ours.__name__
    return hook


_HOOKS = {
    'post_worker_init': _post_worker_init,
    'worker_exit': _stopping,
    'child_exit': _stopping,
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
