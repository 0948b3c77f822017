"""The worker side of notifyd: one Reporter per worker process.

A Reporter says READY=1 for its process, repeats it (self-healing), and
reports the process's activity as units of work begin and end: requests
under gunicorn and ASGI servers, tasks under Celery. Every module that
reports a worker (notifyd_gunicorn's hooks, notifyd.asgi, notifyd.celery)
goes through begin() and end(), so how activity travels is decided here
and nowhere else.

Standard library only. Nothing here runs at import.
"""

import _socket
import logging
import os
import random
import socket
import threading
import time

from . import _page
from ._client import SEND_TIMEOUT, credentials, send, sendmsg, sockaddr

__all__ = ['DEFAULT_REANNOUNCE', 'JITTER', 'RETRY', 'Reporter', 'boot',
           'current', 'leave', 'notify', 'reannounce_interval']

# DEFAULT_REANNOUNCE is how often, in seconds, a ready worker repeats its
# READY=1 unless configured otherwise. JITTER is the largest fraction taken
# off each interval at random, so that workers booted together do not
# announce together. RETRY is the wait after a failed send; it doubles after
# each failure in a row, up to the interval.
DEFAULT_REANNOUNCE = 10.0
JITTER = 0.1
RETRY = 1.0

_logger = logging.getLogger('notifyd')


def reannounce_interval(value=None, setting='reannounce', log=None):
    """Return the re-announcement interval in seconds; 0 means never.

    value is the configured setting, named setting in the error; None reads
    $NOTIFYD_REANNOUNCE. A value that is not a number of seconds, 0 or more,
    is logged as an error on log and the default is used: a typo must not
    stop the server.
    """
    if value is None:
        value = os.environ.get('NOTIFYD_REANNOUNCE', DEFAULT_REANNOUNCE)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < float('inf') or isinstance(value, bool):
        (log or _logger).error('notifyd: %s %r must be a number of seconds, '
                               '0 or more; using %g', setting, value,
                               DEFAULT_REANNOUNCE)
        return DEFAULT_REANNOUNCE
    return seconds


class Reporter:
    """Reports one worker process to notifyd: its READY=1, and its activity.

    READY=1 is sent once as the worker boots, with a blocking send, then
    repeated from a daemon thread every interval. Each READY=1 carries the
    worker's activity page (_page.Page), and begin() and end() only write
    into it: no system call. Without a page (no memfd on this system, or a
    heartbeat deadline, whose WATCHDOG=1 must travel with each unit of
    work), begin() and end() update the activity and send it with one
    non-blocking send on a socket the worker keeps connected. The repeated
    READY=1 goes through that socket too, with the activity: every snapshot
    is taken and sent under self.lock, so notifyd receives them in the order
    they were taken, and no counter ever seems to go backwards.

    A send that fails drops the socket and wakes the thread; until the
    thread has connected again and re-announced, begin() and end() send
    nothing. The thread re-announces at once (at most once a RETRY), and
    after a failure of its own tries again after RETRY seconds, then after
    twice that, up to the interval. stop() ends all of it before the worker
    says STOPPING=1, so that nothing follows it.

    With a heartbeat deadline (watchdog_usec), READY=1 declares it as
    WATCHDOG_USEC, begin() and end() each carry a WATCHDOG=1, and the thread
    beats (a re-announcement) at least every half deadline, but only while
    no unit of work is in flight: a unit that runs past the deadline, a hung
    task, stops the beats, and notifyd marks the worker hung until the unit
    ends. That suits one unit at a time per process, as a Celery prefork
    pool process runs tasks.
    """

    def __init__(self, address, pid, interval, log=None, watchdog_usec=0):
        self.address, self.pid, self.interval = address, pid, interval
        self.log = log or _logger
        self.watchdog_usec = watchdog_usec
        # Held while the activity changes or a datagram is on its way; only
        # non-blocking calls are made under it.
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.wakeup = threading.Event()
        self.failing = False
        self.retry = RETRY
        self.last = 0.0  # time.monotonic() of the last re-announcement
        self.sock = None  # connected to notifyd, or None
        self.credentials = credentials()
        self.beat = '\nWATCHDOG=1' if watchdog_usec else ''
        self.in_flight = 0
        self.requests = 0
        self.busy_ns = 0  # busy time up to busy_since
        self.busy_since = 0  # time.monotonic_ns() when in_flight left 0
        self.page = None
        if not watchdog_usec:
            try:
                self.page = _page.Page()
            except OSError as err:
                _logger.info('notifyd: no activity page for pid %s (%s); '
                             'reporting activity by datagrams', pid, err)
            else:
                # begin() and end() go straight to the page.
                self.begin, self.end = self.page.begin, self.page.end

    def announce(self):
        """Send READY=1 now, as the worker boots; report whether it went.

        The send blocks for up to SEND_TIMEOUT, so that many workers booting
        at once do not lose a READY=1 to a short queue. Then the socket that
        begin() and end() use is connected.
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
        """Start the re-announcing thread; sent is what announce() said."""
        if not sent:
            self.failing = True
        thread = threading.Thread(target=self._run, daemon=True,
                                  name='notifyd-reannounce')
        thread.start()

    def begin(self):
        """Count a unit of work that has begun, and report it."""
        with self.lock:
            if self.in_flight == 0:
                self.busy_since = time.monotonic_ns()
            self.in_flight += 1
            failed = self._push()
        if failed:
            self.wakeup.set()

    def end(self):
        """Count a unit of work that has ended, and report it."""
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
        # The caller holds self.lock. Busy time includes the unit in flight
        # so far, so a long request shows in every re-announcement.
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
        message = 'READY=1\nPID=%d\n%s' % (self.pid, self._activity())
        if self.watchdog_usec:
            message += '\nWATCHDOG_USEC=%d' % self.watchdog_usec
        return message

    def _push(self):
        """Send the activity if connected; return whether a send failed.

        The caller holds self.lock. This is a unit of work's whole cost: one
        system call, or none while the socket is down.
        """
        if self.sock is None:
            return False
        try:
            self._sendmsg(self._activity() + self.beat)
        except OSError:
            self._disconnect()
            return True
        return False

    def _sendmsg(self, message):
        # One system call, with credentials packed once.
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
            sock.connect(sockaddr(self.address))
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
            if self.watchdog_usec and self.in_flight:
                # A READY=1 is a sign of life: while a unit runs, its
                # begin() was the last one, so that a hung one is caught.
                return
            self.last = time.monotonic()
            try:
                if self.sock is None:
                    self._connect()
                sendmsg(self.sock, self._ready(), self.page)
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

    def _period(self):
        """Return the time between two READY=1 when all is well, or None."""
        period = self.interval or None
        if self.watchdog_usec:
            half = self.watchdog_usec / 2e6
            period = half if period is None else min(period, half)
        return period

    def _next(self):
        """Return how long to wait before the next READY=1; None is never.

        With the repetition off (an interval of 0) and no heartbeat, only a
        failure brings one, retried up to every DEFAULT_REANNOUNCE seconds.
        """
        period = self._period()
        longest = period or DEFAULT_REANNOUNCE
        if self.failing:
            wait, self.retry = self.retry, min(self.retry * 2, longest)
            return min(wait, longest)
        if period is None:
            return None
        return period * (1 - JITTER * random.random())

    def _run(self):
        while True:
            woken = self.wakeup.wait(self._next())
            if self.stopped.is_set():
                return
            self.wakeup.clear()
            if woken:
                # A send failed: re-announce now, but not more often than
                # every RETRY seconds.
                pause = self.last + RETRY - time.monotonic()
                if pause > 0 and self.stopped.wait(pause):
                    return
            self._reannounce()


# _current is the Reporter of this process's worker, once one has booted.
# One per process: under gunicorn's UvicornWorker, the gunicorn hooks boot
# it and the ASGI middleware finds it here, so the worker is announced once
# and both report through it.
_current = None


def current():
    """Return the Reporter booted in this process, or None."""
    reporter = _current
    if (reporter is not None and not reporter.stopped.is_set()
            and reporter.pid == os.getpid()):
        return reporter
    return None  # none, one that left, or one inherited through fork


def boot(address, pid, interval, log=None, watchdog_usec=0):
    """Announce pid as ready and keep it announced; return its Reporter.

    A Reporter this process booted before is stopped first, without a
    STOPPING=1: the worker is booting again. Never raises because of
    notifyd; a READY=1 that did not go is logged and retried.
    """
    global _current
    if _current is not None:
        _current.stop()
    reporter = Reporter(address, pid, interval, log, watchdog_usec)
    _current = reporter
    reporter.start(reporter.announce())
    return reporter


def leave(address, pid, log=None):
    """Stop this process's Reporter, then send STOPPING=1 for pid.

    Returns whether STOPPING=1 went. Never raises.
    """
    global _current
    reporter = current()
    if reporter is not None:
        reporter.stop()
        _current = None
    return notify(log, address, 'STOPPING=1', pid)


def notify(log, address, state, pid, warn=True):
    """Send state for pid; return whether it went. Never raises."""
    try:
        send(address, '%s\nPID=%d' % (state, pid))
    except OSError as err:
        if warn:
            (log or _logger).warning(
                'notifyd: could not send %s for pid %s to %s: %s',
                state, pid, address, err)
        return False
    return True
