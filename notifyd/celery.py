"""Celery signal handlers that report each prefork pool process to notifyd.

In the module that creates the Celery application:

    import notifyd.celery
    notifyd.celery.install()

- worker_process_init: each pool process sends READY=1 as it starts, and
  repeats it (self-healing), as notifyd_gunicorn's workers do.
- worker_process_shutdown: the pool process stops repeating it and sends
  STOPPING=1. A pool process that is killed is dropped by notifyd the
  moment it exits, and the one Celery starts in its place announces itself.
- task_prerun and task_postrun: the task counts as in flight while it runs;
  tasks finished and busy time are reported as gunicorn's requests are.
- task_deadline (seconds, or $NOTIFYD_TASK_DEADLINE): a pool process whose
  task runs longer than that is reported hung (notifyd's heartbeat,
  WATCHDOG_USEC), and counts again when the task ends. Set it above your
  longest task: a busy process is not a hung one.

The health answer is then the count of live, ready pool processes. Nothing
here talks to the broker, so the answer does not change while the broker is
down.

The socket is the socket argument, else $NOTIFYD_SOCKET, else
$RUNTIME_DIRECTORY/notify.sock, else ./notify.sock. reannounce is the
interval of the repetition in seconds (else $NOTIFYD_REANNOUNCE, else 10;
0 turns it off).

Only the prefork pool (Celery's default) has pool processes; with the solo,
threads, gevent or eventlet pools nothing is announced. install() imports
Celery's signals only when called; the handlers never raise because of
notifyd and never delay a task: if notifyd is down, the pool starts and
works, and one warning is logged.
"""

import logging
import os

from . import _reporter
from ._client import resolve_socket

__all__ = ['install']

_logger = logging.getLogger(__name__)


class _Settings:
    """What install() was last told; the handlers read it when they run."""

    def __init__(self, address, interval, watchdog_usec):
        self.address, self.interval, self.watchdog_usec = (
            address, interval, watchdog_usec)


_settings = None

# _tasks maps the id of each task this process counted as begun to the
# Reporter that counted it, so that task_postrun ends only what
# task_prerun began.
_tasks = {}


def install(socket=None, reannounce=None, task_deadline=None):
    """Connect notifyd's handlers to Celery's worker and task signals.

    Calling it again replaces the settings and connects nothing twice.
    A task_deadline that is not a number of seconds above 0 is logged as an
    error and ignored. It starts nothing and sends nothing itself: the
    handlers do, in the pool processes, and never raise because of notifyd.
    """
    global _settings
    from celery import signals

    _settings = _Settings(
        resolve_socket(socket),
        _reporter.reannounce_interval(reannounce, log=_logger),
        _deadline_usec(task_deadline))
    for signal, handler in (
            (signals.worker_process_init, _process_init),
            (signals.worker_process_shutdown, _process_shutdown),
            (signals.task_prerun, _task_prerun),
            (signals.task_postrun, _task_postrun)):
        signal.connect(handler, weak=False,
                       dispatch_uid='notifyd.celery.' + handler.__name__)


def _deadline_usec(value):
    if value is None:
        value = os.environ.get('NOTIFYD_TASK_DEADLINE')
        if not value:
            return 0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float('inf') or isinstance(value, bool):
        _logger.error('notifyd: task_deadline %r must be a number of seconds '
                      'above 0; no deadline', value)
        return 0
    return max(1, int(seconds * 1e6))


def _process_init(**_):
    s = _settings
    _tasks.clear()  # inherited from the main process through fork
    _reporter.boot(s.address, os.getpid(), s.interval, _logger,
                   s.watchdog_usec)


def _process_shutdown(**_):
    _reporter.leave(_settings.address, os.getpid(), _logger)


def _task_prerun(task_id=None, **_):
    reporter = _reporter.current()
    if reporter is None:
        return  # not a pool process that worker_process_init announced
    _tasks[task_id] = reporter
    reporter.begin()


def _task_postrun(task_id=None, **_):
    reporter = _tasks.pop(task_id, None)
    if reporter is not None:
        reporter.end()
