"""Example gunicorn config that reports its workers to notifyd.

From the repository root:

    NOTIFYD_SOCKET=/run/notifyd/notify.sock gunicorn \\
        --config examples/gunicorn/gunicorn.conf.py --chdir examples/gunicorn \\
        hello:app

gunicorn reads a relative --config path from the directory it was started
in, not from --chdir.
"""

import os
import sys

# An installed notifyd_gunicorn (pip install notifyd) is used when there is
# one; otherwise the copy in this repository.
try:
    import notifyd_gunicorn  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    '..', '..'))

import notifyd_gunicorn  # noqa: E402

bind = '127.0.0.1:8000'
workers = 2


# Hooks of your own go before install(), which chains after them.
def post_worker_init(worker):
    worker.log.info('worker %s initialised', worker.pid)


# The same variable tells notifyd where to listen (--socket's twin), so one
# setting in the environment configures both sides.
notifyd_socket = os.environ.get('NOTIFYD_SOCKET', '/run/notifyd/notify.sock')

notifyd_gunicorn.install(globals())
