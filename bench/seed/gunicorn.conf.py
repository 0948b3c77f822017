"""gunicorn config of the benchmarks (bench/report).

Each worker reports to whichever health checks the environment asks for: to
notifyd through the notifyd_gunicorn hooks when NOTIFYD_SOCKET is set, and to
the seed-style health check (worker_healthcheck.py, beside this file) through
its own pid file when SEED_HEALTHCHECK_BIND is set. With neither, the config
installs nothing: the application as it runs without notifyd. The command
line sets the rest: --bind, --workers.

Environment, set by the benchmark:

    NOTIFYD_SOCKET              notifyd's socket
    SEED_HEALTHCHECK_BIND       host:port of the seed-style health check
    SEED_HEALTHCHECK_DIRECTORY  where its pid files go
    SEED_HEALTHCHECK_REQUIRE    workers it requires for 200
    BENCH_NOTIFYD_ACTIVITY      'datagrams': the hooks report activity by
                                datagrams, as where no memfd can be made,
                                instead of through the activity page

It logs the names of the hooks notifyd_gunicorn.install() set, as
"notifyd hooks installed: NAME, NAME", so that a measurement can say what it
measured.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.join(_here, '..', '..')
for _path in (_here, os.path.normpath(_root)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import notifyd_gunicorn  # noqa: E402
import worker_healthcheck  # noqa: E402

if os.environ.get('SEED_HEALTHCHECK_BIND'):
    healthcheck_bind = os.environ['SEED_HEALTHCHECK_BIND']
    healthcheck_directory = os.environ['SEED_HEALTHCHECK_DIRECTORY']
    healthcheck_require_workers = int(os.environ['SEED_HEALTHCHECK_REQUIRE'])
    worker_healthcheck.start(globals())

if os.environ.get('BENCH_NOTIFYD_ACTIVITY') == 'datagrams':
    def _no_page():
        raise OSError('activity page turned off by BENCH_NOTIFYD_ACTIVITY')
    import notifyd._page
    notifyd._page.Page = _no_page

if os.environ.get('NOTIFYD_SOCKET'):
    notifyd_socket = os.environ['NOTIFYD_SOCKET']
    _before = dict(globals())
    notifyd_gunicorn.install(globals())
    _hooks = sorted(name for name, value in globals().items()
                    if callable(value) and _before.get(name) is not value)
    sys.stderr.write('notifyd hooks installed: %s\n' % ', '.join(_hooks))
