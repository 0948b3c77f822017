"""Tests for notifyd.asgi, driven as an ASGI server drives an application,
against a real Unix datagram socket.

Run from the repository root:

    python3 -m unittest discover -s tests/python
"""

import asyncio
import logging
import os
import unittest

import notifyd_gunicorn
from notifyd import _reporter
from notifyd.asgi import NotifydMiddleware
from test_notifyd_gunicorn import datagrams_only
from test_notifyd_gunicorn import (OUR_CREDENTIALS, FakeWorker,
                                   SocketTestCase, activity_of)

PID = os.getpid()
READY = ('READY=1\nPID=%d\nX_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\n'
         'X_NOTIFYD_BUSY_USEC=0' % PID).encode()
STOPPING = ('STOPPING=1\nPID=%d' % PID).encode()


class Lifespan:
    """The server's side of the lifespan protocol, as uvicorn runs it."""

    def __init__(self, app):
        self.app = app
        self.inbox = asyncio.Queue()
        self.sent = []

    async def receive(self):
        return await self.inbox.get()

    async def send(self, message):
        self.sent.append(message['type'])

    async def run(self, between=None):
        """Start the application, run between(), shut it down."""
        task = asyncio.ensure_future(self.app(
            {'type': 'lifespan', 'asgi': {'version': '3.0'}},
            self.receive, self.send))
        await self.inbox.put({'type': 'lifespan.startup'})
        while not self.sent and not task.done():
            await asyncio.sleep(0.001)
        if between is not None:
            await between()
        await self.inbox.put({'type': 'lifespan.shutdown'})
        await asyncio.wait_for(task, 30)


async def speaks_lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message['type'] == 'lifespan.startup':
            await send({'type': 'lifespan.startup.complete'})
        elif message['type'] == 'lifespan.shutdown':
            await send({'type': 'lifespan.shutdown.complete'})
            return


async def raises_on_lifespan(scope, receive, send):
    assert scope['type'] == 'http'


async def receives_then_raises(scope, receive, send):
    await receive()
    raise RuntimeError('lifespan is not supported')


async def returns_on_lifespan(scope, receive, send):
    return


async def fails_startup(scope, receive, send):
    await receive()
    await send({'type': 'lifespan.startup.failed', 'message': 'no database'})


async def hello(scope, receive, send):
    if scope['type'] not in ('http', 'websocket'):
        raise ValueError('hello serves HTTP and WebSocket only')
    if scope['type'] == 'websocket':
        await send({'type': 'websocket.accept'})
        await receive()
        return
    await send({'type': 'http.response.start', 'status': 200, 'headers': []})
    await send({'type': 'http.response.body', 'body': b'hello\n'})


async def noop_receive():
    return {'type': 'websocket.disconnect'}


async def discard(message):
    pass


class MiddlewareTest(SocketTestCase):

    def setUp(self):
        super().setUp()
        # The activity in datagrams, where this test can read it; the page
        # itself is tested with the gunicorn hooks.
        datagrams_only(self)
        self.path = os.path.join(self.dir, 'notify.sock')
        self.notifyd = self.receiver(self.path)

    def middleware(self, app):
        return NotifydMiddleware(app, socket=self.path, reannounce=0)

    def test_lifespan_announces_and_stops(self):
        cases = [
            ('an application that speaks lifespan', speaks_lifespan),
            ('one that raises on the lifespan scope', raises_on_lifespan),
            ('one that receives, then raises', receives_then_raises),
            ('one that returns at once', returns_on_lifespan),
        ]
        for case, app in cases:
            with self.subTest(case=case):
                server = Lifespan(self.middleware(app))

                async def between():
                    self.assertEqual(self.notifyd.receive(), (READY, OUR_CREDENTIALS))

                asyncio.run(server.run(between))
                self.assertEqual(server.sent, ['lifespan.startup.complete',
                                               'lifespan.shutdown.complete'])
                self.assertEqual(self.notifyd.receive()[0], STOPPING)
                self.assertEqual(self.notifyd.pending(), [])

    def test_failed_startup_announces_nothing(self):
        server = Lifespan(self.middleware(fails_startup))
        asyncio.run(server.run())
        self.assertEqual(server.sent, ['lifespan.startup.failed'])
        self.assertEqual(self.notifyd.pending(), [])

    def test_an_error_of_an_application_that_speaks_lifespan_is_its_own(self):
        async def breaks_at_shutdown(scope, receive, send):
            await receive()
            await send({'type': 'lifespan.startup.complete'})
            await receive()
            raise RuntimeError('shutdown broke')

        server = Lifespan(self.middleware(breaks_at_shutdown))
        with self.assertRaisesRegex(RuntimeError, 'shutdown broke'):
            asyncio.run(server.run())
        self.assertEqual(self.notifyd.receive()[0], READY)

    def test_http_and_websocket_count_while_they_run(self):
        app = self.middleware(hello)
        server = Lifespan(app)

        async def between():
            self.assertEqual(self.notifyd.receive()[0], READY)
            await app({'type': 'http', 'path': '/'}, noop_receive, discard)
            await app({'type': 'websocket', 'path': '/'}, noop_receive,
                      discard)

        asyncio.run(server.run(between))
        seen = [activity_of(self.notifyd.receive()[0])[:2] for _ in range(4)]
        self.assertEqual(seen, [(1, 0), (0, 1), (1, 1), (0, 2)])
        self.assertEqual(self.notifyd.receive()[0], STOPPING)

    def test_before_startup_a_request_is_not_counted(self):
        app = self.middleware(hello)
        asyncio.run(app({'type': 'http', 'path': '/'}, noop_receive, discard))
        self.assertEqual(self.notifyd.pending(), [])

    def test_a_worker_gunicorn_announced_is_announced_once(self):
        ns = {'notifyd_socket': self.path, 'notifyd_reannounce': 0}
        notifyd_gunicorn.install(ns)
        ns['post_worker_init'](FakeWorker(pid=PID))
        self.assertEqual(self.notifyd.receive()[0], READY)

        app = self.middleware(hello)
        server = Lifespan(app)

        async def between():
            await app({'type': 'http', 'path': '/'}, noop_receive, discard)

        asyncio.run(server.run(between))
        seen = [activity_of(d) for d in self.notifyd.pending()]
        self.assertEqual([s[:2] for s in seen], [(1, 0), (0, 1)])
        self.assertIs(app.reporter, None)
        self.assertIs(_reporter.current(), notifyd_gunicorn._announcer)

    def test_notifyd_down_the_application_starts_and_serves(self):
        self.notifyd.close()
        os.unlink(self.path)
        app = self.middleware(hello)
        server = Lifespan(app)
        sent = []

        async def collect(message):
            sent.append(message['type'])

        async def between():
            await app({'type': 'http', 'path': '/'}, noop_receive, collect)

        with self.assertLogs('notifyd.asgi', logging.WARNING) as logs:
            asyncio.run(server.run(between))
        self.assertEqual(server.sent, ['lifespan.startup.complete',
                                       'lifespan.shutdown.complete'])
        self.assertEqual(sent, ['http.response.start', 'http.response.body'])
        self.assertIn('could not send READY=1', logs.output[0])


if __name__ == '__main__':
    unittest.main()
