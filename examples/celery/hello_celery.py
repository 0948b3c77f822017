"""An example Celery application whose pool processes report to notifyd.

From the repository root, with notifyd (`./notifyd --require 2`) and a
Redis server running:

    NOTIFYD_SOCKET=$PWD/notify.sock CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        celery --workdir examples/celery -A hello_celery worker --concurrency 2

`nap(s)` sleeps s seconds; `hold(path)` runs until path exists, a task
that hangs for as long as its caller wants. NOTIFYD_TASK_DEADLINE (seconds)
sets the deadline past which a task's pool process counts as hung.
"""

import os
import sys
import time

# An installed notifyd (pip install notifyd) is used when there is one;
# otherwise the copy in this repository.
try:
    import notifyd.celery  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    '..', '..'))

from celery import Celery  # noqa: E402

import notifyd.celery  # noqa: E402

app = Celery('hello_celery')
app.conf.broker_url = os.environ.get('CELERY_BROKER_URL',
                                     'redis://127.0.0.1:6379/0')
notifyd.celery.install()


@app.task
def nap(seconds):
    time.sleep(seconds)
    return seconds


@app.task
def hold(path):
    while not os.path.exists(path):
        time.sleep(0.05)
    return path
