"""An example ASGI application that reports its workers to notifyd.

From the repository root, with notifyd running (`./notifyd --require 2`):

    NOTIFYD_SOCKET=$PWD/notify.sock uvicorn --app-dir examples/asgi \\
        --workers 2 hello_asgi:app
    NOTIFYD_SOCKET=$PWD/notify.sock gunicorn --chdir examples/asgi \\
        -k uvicorn.workers.UvicornWorker --workers 2 hello_asgi:app

`/` answers hello, `/sleep?s=2` answers after 2 seconds, and a WebSocket
at any path echoes what it receives. `bare` is the same application
without the middleware, the floor for bench/report.

hello does not speak the lifespan protocol: the middleware answers it.
"""

import asyncio
import os
import sys
from urllib.parse import parse_qs

# An installed notifyd (pip install notifyd) is used when there is one;
# otherwise the copy in this repository.
try:
    import notifyd.asgi  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    '..', '..'))

from notifyd.asgi import NotifydMiddleware  # noqa: E402


async def hello(scope, receive, send):
    if scope['type'] == 'websocket':
        return await echo(receive, send)
    if scope['type'] != 'http':
        raise ValueError('hello serves HTTP and WebSocket only, not %r'
                         % scope['type'])
    body = b'hello\n'
    if scope['path'] == '/sleep':
        seconds = float(parse_qs(scope['query_string'].decode()).get(
            's', ['1'])[0])
        await asyncio.sleep(seconds)
        body = b'slept\n'
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', b'text/plain')]})
    await send({'type': 'http.response.body', 'body': body})


async def echo(receive, send):
    while True:
        message = await receive()
        if message['type'] == 'websocket.connect':
            await send({'type': 'websocket.accept'})
        elif message['type'] == 'websocket.receive':
            await send({'type': 'websocket.send', 'text': message.get('text')})
        else:
            return


bare = hello
app = NotifydMiddleware(hello)
