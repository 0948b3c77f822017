"""An ASGI middleware that reports its worker process to notifyd.

    from notifyd.asgi import NotifydMiddleware
    app = NotifydMiddleware(app)

It works under a single uvicorn process, under `uvicorn --workers N` (each
worker process reports itself) and under gunicorn's UvicornWorker, with
notifyd run on its own (or, under gunicorn, by notifyd_gunicorn.start()).

- Lifespan: when the application completes its startup
  (lifespan.startup.complete), the process sends READY=1 and repeats it,
  as notifyd_gunicorn's workers do (self-healing); when it completes its
  shutdown, the process stops repeating it and sends STOPPING=1. An
  application that does not speak the lifespan protocol (it raises, or
  returns without answering) is answered by the middleware itself, so the
  server sees a lifespan that works either way. The server must run the
  lifespan protocol (uvicorn's default, --lifespan auto, does): with
  --lifespan off nothing is announced. A single uvicorn process binds its
  port just after the lifespan startup, so notifyd may count it a moment
  before the port accepts; with --workers and under gunicorn the port is
  bound before any worker starts.
- Each HTTP request and each WebSocket connection counts as in flight while
  the application runs it; requests finished and busy time are reported as
  the gunicorn hooks report them, through the same Reporter, at the same
  cost: one non-blocking send as a request begins and one as it ends.
- Under gunicorn with notifyd_gunicorn's hooks (install() or start()),
  post_worker_init has already announced the worker: the middleware reports
  through that worker's Reporter, so the worker is counted once, and
  gunicorn's worker_exit says STOPPING=1.

The socket is the socket argument, else $NOTIFYD_SOCKET, else
$RUNTIME_DIRECTORY/notify.sock, else ./notify.sock. reannounce is the
interval of the repetition in seconds (else $NOTIFYD_REANNOUNCE, else 10;
0 turns it off).

Never raises because of notifyd, never blocks a request: if notifyd is down,
the application starts and serves, and one warning is logged.
"""

import logging
import os

from . import _reporter
from ._client import resolve_socket

__all__ = ['NotifydMiddleware']

_logger = logging.getLogger(__name__)

# The lifespan messages an application answers with.
_STARTUP_COMPLETE = 'lifespan.startup.complete'
_SHUTDOWN_COMPLETE = 'lifespan.shutdown.complete'
_FINAL = frozenset(['lifespan.startup.failed', _SHUTDOWN_COMPLETE,
                    'lifespan.shutdown.failed'])


class NotifydMiddleware:
    """Wraps an ASGI application so that notifyd counts its worker process.

    The worker is announced when the application completes its lifespan
    startup and leaves when it completes its shutdown; HTTP requests and
    WebSocket connections count as in flight while they run (see the
    module's documentation). It never raises because of notifyd, and never
    blocks a request: reporting one costs two non-blocking sends.
    """

    def __init__(self, app, socket=None, reannounce=None):
        self.app = app
        self.address = resolve_socket(socket)
        self.interval = _reporter.reannounce_interval(reannounce, log=_logger)
        # reporter is this worker's, from the lifespan startup on; owned says
        # whether this middleware announced it (and so says it stops).
        self.reporter = None
        self.owned = False

    async def __call__(self, scope, receive, send):
        kind = scope['type']
        if kind == 'http' or kind == 'websocket':
            reporter = self.reporter
            if reporter is None:
                return await self.app(scope, receive, send)
            reporter.begin()
            try:
                return await self.app(scope, receive, send)
            finally:
                reporter.end()
        if kind == 'lifespan':
            return await self._lifespan(scope, receive, send)
        return await self.app(scope, receive, send)

    def _started(self):
        """The application has started: count this process as a worker."""
        reporter = _reporter.current()
        if reporter is not None:
            self.reporter, self.owned = reporter, False
            return
        self.reporter = _reporter.boot(self.address, os.getpid(),
                                       self.interval, _logger)
        self.owned = True

    def _stopped(self):
        """The application has shut down: no more reports, STOPPING=1."""
        reporter, self.reporter = self.reporter, None
        if reporter is not None and self.owned:
            _reporter.leave(self.address, reporter.pid, _logger)

    async def _lifespan(self, scope, receive, send):
        answered = set()
        unanswered = []  # the last message the application received

        async def app_receive():
            message = await receive()
            unanswered[:] = [message]
            return message

        async def app_send(message):
            kind = message.get('type')
            answered.add(kind)
            unanswered.clear()
            if kind == _STARTUP_COMPLETE:
                self._started()
            elif kind == _SHUTDOWN_COMPLETE:
                self._stopped()
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if answered:
                raise  # the application speaks lifespan: its error is its own
            _logger.debug('notifyd: the application does not support the '
                          'lifespan protocol; the middleware answers it')
        if answered & _FINAL:
            return
        await self._answer(receive, send, unanswered)

    async def _answer(self, receive, send, pending):
        """Answer the lifespan for an application that stopped doing so."""
        while True:
            message = pending.pop() if pending else await receive()
            kind = message.get('type')
            if kind == 'lifespan.startup':
                self._started()
                await send({'type': _STARTUP_COMPLETE})
            elif kind == 'lifespan.shutdown':
                self._stopped()
                await send({'type': _SHUTDOWN_COMPLETE})
                return
