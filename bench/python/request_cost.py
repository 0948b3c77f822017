"""What reporting a request to notifyd costs the process that serves it.

Run by bench/report ("ASGI middleware overhead"), or by hand from the
repository root:

    /usr/bin/python3 bench/python/request_cost.py [--rounds 15]

Four contenders in one process, alternating round by round: the example
ASGI application bare and wrapped in notifyd.asgi.NotifydMiddleware, and a
gunicorn request without hooks and with notifyd_gunicorn's pre_request and
post_request. Both report through one Reporter, as under gunicorn's
UvicornWorker, to a datagram socket this script binds (SO_PASSCRED, as
notifyd's) and empties after every batch of BATCH requests, so that each
send finds room, as it does with a notifyd that keeps up. Only the requests
are timed (CPU time of this process), never the emptying. Prints one JSON
object: the median of the rounds, in nanoseconds per request.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'examples', 'asgi')]

import hello_asgi  # noqa: E402
import notifyd_gunicorn  # noqa: E402
from notifyd.asgi import NotifydMiddleware  # noqa: E402

# BATCH requests send 2 * BATCH datagrams, fewer than the kernel's shortest
# datagram queue (net.unix.max_dgram_qlen, 10 by default).
BATCH = 4
BATCHES = 2000


class Sink:
    """A bound datagram socket standing where notifyd's would."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.received = 0

    def drain(self):
        while True:
            try:
                self.sock.recv(4096)
            except BlockingIOError:
                return
            self.received += 1


async def main(rounds):
    tmp = tempfile.mkdtemp(prefix='nd')
    path = os.path.join(tmp, 'notify.sock')
    sink = Sink(path)
    scope = {'type': 'http', 'path': '/', 'query_string': b''}

    async def receive():
        return {'type': 'http.request'}

    async def send(message):
        pass

    # As under gunicorn's UvicornWorker: post_worker_init announces the
    # process, and the middleware reports through the same Reporter.
    ns = {'notifyd_socket': path, 'notifyd_reannounce': 0}
    notifyd_gunicorn.install(ns)

    class Worker:
        pid = os.getpid()
        log = None

    class Request:
        pass

    ns['post_worker_init'](Worker)
    wrapped = NotifydMiddleware(hello_asgi.hello, socket=path, reannounce=0)
    startup = asyncio.Queue()
    await startup.put({'type': 'lifespan.startup'})
    answered = asyncio.Event()

    async def lifespan_send(message):
        answered.set()

    lifespan = asyncio.ensure_future(
        wrapped({'type': 'lifespan'}, startup.get, lifespan_send))
    await answered.wait()
    pre, post = ns['pre_request'], ns['post_request']
    sink.drain()  # the READY=1
    sink.received = 0

    async def asgi(app):
        total = 0
        for _ in range(BATCHES):
            t0 = time.process_time_ns()
            for _ in range(BATCH):
                await app(scope, receive, send)
            total += time.process_time_ns() - t0
            sink.drain()
        return total

    async def gunicorn(hooks):
        total = 0
        for _ in range(BATCHES):
            t0 = time.process_time_ns()
            for _ in range(BATCH):
                req = Request()
                if hooks:
                    pre(Worker, req)
                    post(Worker, req, {}, None)
            total += time.process_time_ns() - t0
            sink.drain()
        return total

    contenders = {
        'asgi_bare': lambda: asgi(hello_asgi.hello),
        'asgi_middleware': lambda: asgi(wrapped),
        'gunicorn_bare': lambda: gunicorn(False),
        'gunicorn_hooks': lambda: gunicorn(True),
    }
    runs = {name: [] for name in contenders}
    for _ in range(rounds + 1):  # the first round warms up
        for name, run in contenders.items():
            runs[name].append(await run() / (BATCHES * BATCH))
    reporter = wrapped.reporter
    result = {name: statistics.median(r[1:]) for name, r in runs.items()}
    # Every request of the two reporting contenders wrote into the
    # reporter's activity page and sent nothing; without a page, each sent
    # both datagrams.
    sent = 0
    if reporter.page is None:
        sent = 2 * BATCH * BATCHES * (rounds + 1) * 2
    result['page'] = reporter.page is not None
    result['datagrams'] = sink.received
    result['datagrams_expected'] = sent
    result['connected'] = reporter.sock is not None
    print(json.dumps(result))
    await startup.put({'type': 'lifespan.shutdown'})
    await lifespan
    os.unlink(path)
    os.rmdir(tmp)


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--rounds', type=int, default=15)
    asyncio.run(main(parser.parse_args().rounds))
