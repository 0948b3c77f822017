"""Tests for the example WSGI app."""

import unittest
import wsgiref.util

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..', 'examples', 'gunicorn'))

from hello import app  # noqa: E402


def get(path, query=''):
    environ = {'PATH_INFO': path, 'QUERY_STRING': query}
    wsgiref.util.setup_testing_defaults(environ)
    started = []
    body = b''.join(app(environ, lambda status, headers:
                        started.append((status, dict(headers)))))
    (status, headers), = started
    return status, headers, body


class AppTest(unittest.TestCase):

    def test_answers(self):
        cases = [
            ('root', '/', '', '200 OK', b'hello\n'),
            ('sleep', '/sleep', 's=0', '200 OK', b'slept 0\n'),
            ('sleep fraction', '/sleep', 's=0.01', '200 OK', b'slept 0.01\n'),
            ('not a number', '/sleep', 's=x', '400 Bad Request',
             b's must be a number of seconds >= 0\n'),
            ('negative', '/sleep', 's=-1', '400 Bad Request',
             b's must be a number of seconds >= 0\n'),
            ('unknown path', '/nope', '', '404 Not Found', b'not found\n'),
        ]
        for case, path, query, want_status, want_body in cases:
            with self.subTest(case=case):
                status, headers, body = get(path, query)
                self.assertEqual(status, want_status)
                self.assertEqual(body, want_body)
                self.assertEqual(headers['Content-Length'], str(len(body)))
                self.assertEqual(headers['Content-Type'],
                                 'text/plain; charset=utf-8')


if __name__ == '__main__':
    unittest.main()
