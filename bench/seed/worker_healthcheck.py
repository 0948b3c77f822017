"""The health check notifyd replaces, rebuilt for the saturation benchmark.

gunicorn_worker_healthcheck 1.0.0 is described, not vendored, here; this
module does what its description says, with the standard library only:

- post_worker_init writes an empty pid file, healthcheck_filename with the
  worker's pid, in healthcheck_directory;
- worker_exit removes it (a worker that is killed never runs worker_exit, so
  its file stays: the defect notifyd fixes);
- when_ready, which gunicorn runs in the master once it listens, starts a
  single-threaded wsgiref HTTP server in a daemon thread of the master. Each
  request counts the pid files with glob and answers 200 when at least
  healthcheck_require_workers are there, else 500.

Settings, in the gunicorn config namespace, as the package named them:

    healthcheck_bind             host:port; None disables the health check
    healthcheck_require_workers  default 1
    healthcheck_directory        default '' (the current directory)
    healthcheck_filename         default '.gunicorn.worker.{}'

A port of 0 lets the kernel pick one; the address is logged as
"worker healthcheck listening at http://HOST:PORT" so a caller can find it.

The server does not log each request. wsgiref would write one line per
request to the master's stderr; leaving that out favours this baseline.
"""

import glob
import os
import threading
import wsgiref.simple_server

__all__ = ['start']

DEFAULT_FILENAME = '.gunicorn.worker.{}'

# _HOOKS are the gunicorn hooks start() installs, each after the one the
# namespace already holds.
_HOOKS = ('when_ready', 'post_worker_init', 'worker_exit')


def start(ns):
    """Install the health check's hooks in the gunicorn config namespace ns.

    Each hook runs after the one ns already holds under the same name.
    Nothing is installed when healthcheck_bind is not set.
    """
    bind = ns.get('healthcheck_bind')
    if not bind:
        return
    host, _, port = bind.rpartition(':')
    require = int(ns.get('healthcheck_require_workers', 1))
    directory = ns.get('healthcheck_directory', '')
    filename = ns.get('healthcheck_filename', DEFAULT_FILENAME)
    pattern = os.path.join(directory, filename.format('*'))

    def pid_file(pid):
        return os.path.join(directory, filename.format(pid))

    previous = {name: ns.get(name) for name in _HOOKS}

    def when_ready(server):
        _run(previous['when_ready'], server)
        httpd = wsgiref.simple_server.make_server(
            host, int(port), _counting_app(pattern, require),
            handler_class=_QuietHandler)
        thread = threading.Thread(target=httpd.serve_forever,
                                  name='worker-healthcheck', daemon=True)
        thread.start()
        server.log.info('worker healthcheck listening at http://%s:%d',
                        *httpd.server_address[:2])

    def post_worker_init(worker):
        _run(previous['post_worker_init'], worker)
        with open(pid_file(worker.pid), 'w'):
            pass

    def worker_exit(server, worker):
        _run(previous['worker_exit'], server, worker)
        try:
            os.remove(pid_file(worker.pid))
        except FileNotFoundError:
            pass

    ns.update(when_ready=when_ready, post_worker_init=post_worker_init,
              worker_exit=worker_exit)


def _counting_app(pattern, require):
    def app(environ, start_response):
        ready = len(glob.glob(pattern))
        status = '200 OK' if ready >= require else '500 Internal Server Error'
        body = ('%d workers ready\n' % ready).encode()
        start_response(status, [
            ('Content-Type', 'text/plain; charset=utf-8'),
            ('Content-Length', str(len(body))),
        ])
        return [body]

    return app


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def _run(hook, *args):
    if hook is not None:
        hook(*args)
