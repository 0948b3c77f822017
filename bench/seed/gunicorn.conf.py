"""gunicorn config of the saturation benchmark (bench/saturation).

Every worker reports twice: to notifyd through the notifyd_gunicorn hook, and
to the seed-style health check (worker_healthcheck.py, beside this file)
through its own pid file. The command line sets the rest: --bind, --workers.

Environment, set by the benchmark:

    NOTIFYD_SOCKET              notifyd's socket
    SEED_HEALTHCHECK_BIND       host:port of the seed-style health check
    SEED_HEALTHCHECK_DIRECTORY  where its pid files go
    SEED_HEALTHCHECK_REQUIRE    workers it requires for 200
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

healthcheck_bind = os.environ['SEED_HEALTHCHECK_BIND']
healthcheck_directory = os.environ['SEED_HEALTHCHECK_DIRECTORY']
healthcheck_require_workers = int(os.environ['SEED_HEALTHCHECK_REQUIRE'])
worker_healthcheck.start(globals())

notifyd_socket = os.environ['NOTIFYD_SOCKET']
notifyd_gunicorn.install(globals())
