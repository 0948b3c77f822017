"""A tiny WSGI app for trying notifyd with gunicorn.

GET /          200 "hello\\n"
GET /sleep?s=N sleeps N seconds (a decimal number), then 200 "slept N\\n";
               used to keep workers busy. gunicorn's --timeout (30 s by
               default) kills a sync worker that sleeps longer.
Anything else  404
"""

import time
import urllib.parse


def app(environ, start_response):
    path = environ.get('PATH_INFO') or '/'
    if path == '/':
        return _answer(start_response, '200 OK', 'hello\n')
    if path == '/sleep':
        query = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))
        value = query.get('s', ['1'])[0]
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1
        if not 0 <= seconds < float('inf'):
            return _answer(start_response, '400 Bad Request',
                           's must be a number of seconds >= 0\n')
        time.sleep(seconds)
        return _answer(start_response, '200 OK', 'slept %s\n' % value)
    return _answer(start_response, '404 Not Found', 'not found\n')


def _answer(start_response, status, text):
    body = text.encode()
    start_response(status, [
        ('Content-Type', 'text/plain; charset=utf-8'),
        ('Content-Length', str(len(body))),
    ])
    return [body]
