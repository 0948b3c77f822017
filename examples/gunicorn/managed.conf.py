"""Example gunicorn config in managed mode: the master runs notifyd.

With the notifyd wheel installed in the environment gunicorn runs in, from
the repository root:

    venv/bin/python -m gunicorn \\
        --config examples/gunicorn/managed.conf.py --chdir examples/gunicorn \\
        hello:app
    curl http://127.0.0.1:8001/     # 2 workers ready

The last three lines are gunicorn_worker_healthcheck's, with one import and
one call changed.
"""

bind = '127.0.0.1:8000'
workers = 2
healthcheck_require_workers = 2


# Hooks of your own go before start(), which chains after them.
def post_worker_init(worker):
    worker.log.info('worker %s initialised', worker.pid)


import notifyd_gunicorn  # noqa: E402
healthcheck_bind = '127.0.0.1:8001'
notifyd_gunicorn.start(globals())
