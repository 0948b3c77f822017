"""Managed mode: the gunicorn master runs notifyd for its own workers.

At the end of a gunicorn config file, with the notifyd wheel installed in
the environment gunicorn runs in:

    import notifyd_gunicorn
    healthcheck_bind = '127.0.0.1:8001'
    notifyd_gunicorn.start(globals())

start() reads the settings of gunicorn_worker_healthcheck, with its
defaults: healthcheck_bind (None, the default, starts nothing),
healthcheck_require_workers (1), healthcheck_directory ('': the current
directory) and healthcheck_filename ('.gunicorn.worker.{}'). Three more
are optional: healthcheck_reload_grace, the seconds a HUP reload keeps the
old workers' count while the new ones boot (notifyd's --reload-grace, 10 by
default); notifyd_args, a list of further notifyd flags; and
notifyd_binary, the notifyd to run instead of the one installed next to
the interpreter. A setting that is wrong is logged as one line in
gunicorn's log; gunicorn boots and serves all the same, without notifyd at
the first start, with notifyd's previous settings at a reload.

How it runs, and why:
- The master binds the health address when the config file is read, so a
  taken port is found before anything is installed, and holds it for the
  whole run: a probe that arrives while notifyd restarts waits in the
  listen queue instead of being refused.
- Before the first worker (when_ready), or with preload_app when the master
  first sets its number of workers (nworkers_changed, in Arbiter.setup,
  before the application is loaded and after daemon = True has forked),
  the master binds the notify socket in a directory of its own, which it
  keeps (see _SocketDir: only the socket goes to the workers' user), and
  runs the notifyd binary found next to the interpreter, never through
  PATH, passing both sockets as systemd's socket activation does. What
  workers send while notifyd starts or restarts waits in the socket's
  queue. The worker hooks are install()'s, on that socket. So from the
  first probe on, notifyd answers: 500 "0 workers ready, starting" while
  the application loads, even for seconds with preload_app.
- notifyd gets gunicorn's workers as --expect, and each TTIN or TTOU as an
  X_NOTIFYD_EXPECT= message, so its capacity is the configured one.
- Under a supervisor (systemd's NOTIFY_SOCKET), start() takes the master's
  NOTIFY_SOCKET out of its environment before gunicorn reads it, so that
  gunicorn's own READY=1, sent before any worker exists, never goes. notifyd
  gets it instead, with --systemd-ready workers and --main-pid: it sends
  READY=1 once healthcheck_require_workers workers are ready, RELOADING=1
  then READY=1 around a HUP, STATUS= with the count, and STOPPING=1 when it
  stops with the master. A unit needs NotifyAccess=all for systemd to take
  them from notifyd, the master's child.
- At a HUP (on_reload), once notifyd matches the new settings, the master
  sends it RELOADING=1 and waits until it is applied: notifyd keeps the old
  workers' count until the new ones are ready or healthcheck_reload_grace
  ends, so the health check does not fail because gunicorn stops the old
  workers before the new ones have booted.
- notifyd is the master's child, watched through a pidfd. gunicorn reaps
  every child with waitpid(-1) and halts on exit codes 3 and 4, so the
  master's SIGCHLD handler is wrapped: notifyd is reaped through its pidfd
  before gunicorn looks, and started again at once if it died, with a line
  in gunicorn's log. A notifyd that keeps dying at start, or that refuses
  its arguments, is left stopped until the next reload. The master runs no
  thread for any of this.
- notifyd runs with --exit-with the master's pid, so it ends with the
  master however the master ends, SIGKILL included. A clean stop (TERM,
  INT, QUIT) also stops it from on_exit.
- A HUP reload runs the config file again, and start() with it; notifyd
  keeps running, and is restarted on the same sockets only when a setting
  changed (the held health socket is replaced when healthcheck_bind did).
- USR2: the new master inherits both sockets and the socket directory's
  lock, verifies them, tells the old master's notifyd to stop and starts
  its own on them, so one health endpoint answers all along and the two
  masters never bind the port twice. From then on the old master starts
  no notifyd and never removes the directory. If the new master goes away
  before the old one, the old master runs notifyd again.
- Whenever a notifyd is replaced (USR2, a changed setting), the old one
  gets SIGTERM before the new one starts: it stops reading datagrams and
  accepting at once, then answers every probe it had accepted, while the
  new one already accepts. No probe is refused or cut, and no datagram
  goes to a notifyd that is about to exit.
"""

import copy
import fcntl
import os
import re
import secrets
import select
import signal
import socket
import stat
import sys
import tempfile
import time

from ._chain import _MARK, _chain
from ._process import (_Process, _child_alive, _error_log_fd, _fork_exec,
                       find_binary)

__all__ = ['start']

# The seed's settings and defaults.
DEFAULT_REQUIRE = 1
DEFAULT_DIRECTORY = ''
DEFAULT_FILENAME = '.gunicorn.worker.{}'

# QUICK_EXIT is how soon after its start an exit counts as failing at
# start; QUICK_EXITS of those in a row leave notifyd stopped, so a notifyd
# that cannot run does not fork again on every SIGCHLD.
QUICK_EXIT = 2.0
QUICK_EXITS = 5

# STOP_TIMEOUT bounds how long the master waits for notifyd to stop on
# SIGTERM before it kills it: notifyd stops in milliseconds.
STOP_TIMEOUT = 5.0

# HANDOFF is the variable through which a master hands its sockets to the
# master a USR2 starts: notify=FD,http=FD,pid=NOTIFYD_PID.
HANDOFF = 'NOTIFYD_GUNICORN_HANDOFF'

# MAX_RELOAD_GRACE is the longest --reload-grace notifyd takes, in seconds.
MAX_RELOAD_GRACE = 600

# USAGE_ERROR is notifyd's exit status for arguments it refuses.
USAGE_ERROR = 2


# Unix socket paths are limited by sun_path (108 bytes with its NUL).
_SUN_PATH_MAX = 107


def start(ns):
    """Run notifyd from the gunicorn master, configured by the namespace ns.

    ns is the config file's globals(). Call start() at the end of the file,
    after your own hooks, which it chains before its own, as install() does.
    It never raises: a setting that is wrong is logged in gunicorn's log.
    """
    settings, error = _read_settings(ns)
    if _manager.configure(settings, error):
        from . import install
        ns['notifyd_socket'] = _manager.path
        install(ns, _reload=False)
    for name, hook in _manager.hooks().items():
        previous = ns.get(name)
        if getattr(previous, _MARK, False):
            previous = getattr(previous, '_notifyd_previous')
        ns[name] = _chain(name, previous, hook)


class _Settings:
    """The settings notifyd runs with; equal settings need no restart."""

    __slots__ = ('bind', 'require', 'directory', 'filename', 'reload_grace',
                 'args', 'binary', 'queues')

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.get(name, ()))

    def _key(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return isinstance(other, _Settings) and self._key() == other._key()

    def flags(self):
        flags = ['--bind', self.bind, '--require', str(self.require),
                 '--dir', self.directory, '--filename', self.filename]
        if self.reload_grace is not None:
            flags += ['--reload-grace', '%gms' % (self.reload_grace * 1000)]
        for address in self.queues:
            flags += ['--listen-queue', address]
        return flags


def _read_settings(ns):
    """Return (settings, None), or (None, a one-line error), or (None, None)
    when healthcheck_bind is None."""
    bind = ns.get('healthcheck_bind')
    if bind is None:
        return None, None
    if not isinstance(bind, str) or _split_bind(bind) is None:
        return None, ('healthcheck_bind %r: must be "host:port", such as '
                      '"127.0.0.1:8001" or "[::1]:8001"' % (bind,))
    require = ns.get('healthcheck_require_workers', DEFAULT_REQUIRE)
    try:
        if isinstance(require, (bool, float)):
            raise ValueError
        require = int(require)
        if require < 0:
            raise ValueError
    except (TypeError, ValueError):
        return None, ('healthcheck_require_workers %r: must be a whole '
                      'number, 0 or more' % (require,))
    directory = ns.get('healthcheck_directory', DEFAULT_DIRECTORY)
    if not isinstance(directory, str):
        return None, ('healthcheck_directory %r: must be a directory path, '
                      'or "" for the current directory' % (directory,))
    filename = ns.get('healthcheck_filename', DEFAULT_FILENAME)
    problem = _filename_problem(filename)
    if problem:
        return None, 'healthcheck_filename %r: %s' % (filename, problem)
    grace = ns.get('healthcheck_reload_grace')
    if grace is not None:
        if (isinstance(grace, bool) or not isinstance(grace, (int, float))
                or not 0 <= grace <= MAX_RELOAD_GRACE):
            return None, ('healthcheck_reload_grace %r: must be a number of '
                          'seconds from 0 to %d' % (grace, MAX_RELOAD_GRACE))
    args = ns.get('notifyd_args') or []
    if (not isinstance(args, (list, tuple))
            or not all(isinstance(a, str) for a in args)):
        return None, ('notifyd_args %r: must be a list of strings, such as '
                      '["--log-level", "debug"]' % (args,))
    problem = _args_problem(args)
    if problem:
        return None, 'notifyd_args %r: %s' % (args, problem)
    binary = ns.get('notifyd_binary')
    if binary is not None and not isinstance(binary, str):
        return None, 'notifyd_binary %r: must be a path' % (binary,)
    return _Settings(
        bind=bind, require=require,
        directory=os.path.abspath(directory or '.'),
        filename=filename, reload_grace=grace, args=tuple(args),
        binary=binary,
    ), None


# MANAGED_FLAGS are the notifyd flags managed mode sets itself, each with
# what sets it instead: a later flag would win over managed mode's, so
# notifyd_args must not name them.
MANAGED_FLAGS = {
    'exit-with': 'managed mode sets it to the master\'s pid, so that '
                 'notifyd never outlives the master',
    'socket': 'managed mode binds a private notify socket of its own',
    'bind': 'set healthcheck_bind instead',
    'require': 'set healthcheck_require_workers instead',
    'dir': 'set healthcheck_directory instead',
    'filename': 'set healthcheck_filename instead',
}


def _args_problem(args):
    # notifyd's flags, as Go's flag package reads them: -name or --name,
    # with the value after "=" or in the next argument. A "--" ends them.
    for arg in args:
        if arg == '--':
            return None
        if not arg.startswith('-'):
            continue
        name = arg.lstrip('-').split('=', 1)[0]
        if name in MANAGED_FLAGS and arg.startswith(('-' + name,
                                                      '--' + name)):
            return '--%s is managed mode\'s own: %s' % (name,
                                                         MANAGED_FLAGS[name])
    return None


def _filename_problem(filename):
    # The rules of notifyd's --filename, checked here so that the error is
    # one line in gunicorn's log rather than a notifyd that will not start.
    if not isinstance(filename, str) or filename.count('{}') != 1:
        return 'must contain exactly one {} placeholder for the pid'
    if '/' in filename:
        return ('must be a file name without "/"; put the directory in '
                'healthcheck_directory')
    if filename.endswith('.tmp'):
        return 'must not end in .tmp, which marks a state file being written'
    if any(c in filename.replace('{}', '', 1) for c in '{}\0'):
        return 'must not contain braces other than the one {} placeholder'
    return None


def _split_bind(bind):
    """Return (host, port) of 'host:port', or None when bind is not one."""
    host, sep, port = bind.rpartition(':')
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith('[') and host.endswith(']'):
        host = host[1:-1]
    elif ':' in host:
        return None
    return host, int(port)


class _Manager:
    """The one notifyd of this master. It is module state, so that it
    survives the config file being run again at each HUP: gunicorn keeps
    its modules in sys.modules across reloads."""

    def __init__(self):
        self.wanted = None       # _Settings notifyd should run with
        self.messages = []       # (level, line) waiting for gunicorn's log
        self.http = None         # the held health socket
        self.http_bind = None    # the healthcheck_bind it was bound for
        self.retired_http = None  # the one before a reload changed it
        self.notify = None       # the notify socket, once bound
        self.path = None         # its path
        self.directory = None    # its _SocketDir, once made or adopted
        self.process = None      # the running notifyd
        self.retired = []        # notifyd processes being stopped
        self.failures = 0        # quick exits in a row
        self.given_up = False
        self.handed_over = False  # to the master a USR2 started
        self.old_notifyd = None  # (pid, master) of the old master's notifyd
        self.server = None       # gunicorn's arbiter
        self.attached = False
        self.adopted = False
        self.supervisor = None   # the master's NOTIFY_SOCKET, taken over

    # Config time: the config file is being run, in the master. gunicorn's
    # logger is not set up yet, so lines wait for the next hook.

    def configure(self, settings, error):
        """Take the settings of a config run. Returns whether the worker
        hooks are to be installed, on self.path."""
        if not self.adopted:
            self.adopted = True
            self._adopt()
        running = self.wanted is not None
        if error is None and settings is not None:
            try:
                settings.binary = find_binary(settings.binary)
                self._bind_http(settings.bind)
            except (LookupError, OSError) as err:
                error = str(err)
        if error is not None:
            if running:
                self._say('error', '%s; notifyd keeps its previous settings'
                          % error)
                return True
            self._say('error', '%s; notifyd is not started' % error)
            return False
        if settings is None:
            self._say('info', 'healthcheck_bind is None: notifyd is not %s'
                      % ('running any more' if running else 'started'))
            self.wanted = None
            return False
        if self.path is None:
            self.path = _private_path()
        if self.supervisor is None:
            # Before gunicorn reads it: its READY=1 comes before any worker.
            self.supervisor = os.environ.pop('NOTIFY_SOCKET', None)
        self.wanted = settings
        return True

    def _adopt(self):
        # A master started by USR2 takes the sockets its parent handed over,
        # once they prove to be what a parent master hands over: anything
        # else is a value left over from an older master, or a forgery, and
        # its descriptors are closed.
        handoff = os.environ.pop(HANDOFF, None)
        if not handoff:
            return
        try:
            fields = dict(part.split('=', 1) for part in handoff.split(','))
        except ValueError:
            fields = {}
        try:
            self.notify, self.http, self.directory, self.old_notifyd = (
                _verify_handoff(fields))
        except (KeyError, ValueError, OSError) as err:
            _close_named(fields)
            self._say('warning', 'ignoring %s=%r: %s; its descriptors are '
                      'closed' % (HANDOFF, handoff, err))
            return
        self.path = self.notify.getsockname()
        self.http_bind = self.http.getsockname()

    def _bind_http(self, bind):
        if self.http is not None and self._same_address(bind):
            return
        host, port = _split_bind(bind)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host or None, port, 0, socket.SOCK_STREAM, 0,
                socket.AI_PASSIVE)[0]
        except socket.gaierror as err:
            raise OSError('healthcheck_bind %r: %s' % (bind, err.strerror))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
        except OSError as err:
            sock.close()
            raise OSError('healthcheck_bind %r: %s' % (bind, err.strerror))
        if self.http is not None:
            # Closed once notifyd has moved to the new one (on_reload).
            self.retired_http = self.http
        self.http, self.http_bind = sock, bind

    def _same_address(self, bind):
        if self.http_bind == bind:
            return True
        if isinstance(self.http_bind, str):
            return False
        # An adopted socket: compare addresses; port 0 keeps any port.
        host, port = _split_bind(bind)
        try:
            infos = socket.getaddrinfo(host or None, port, 0,
                                       socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror:
            return False
        held = self.http_bind
        if any(info[4][0] == held[0] and port in (0, held[1])
               for info in infos):
            self.http_bind = bind
            return True
        self.http.close()
        self.http = None
        return False

    def _say(self, level, line):
        message = (level, 'notifyd: ' + line)
        if message not in self.messages:  # start() twice in one file
            self.messages.append(message)

    # Hooks: run by gunicorn in the master, except post_fork.

    def hooks(self):
        return {
            'nworkers_changed': self.workers_changed,
            'when_ready': self.sync,
            'on_reload': self.reload,
            'pre_exec': self.pre_exec,
            'post_fork': self.post_fork,
            'on_exit': self.on_exit,
        }

    def workers_changed(self, server, new, old):
        """The master's first setup starts notifyd, before preload_app loads
        the application; later changes (TTIN, TTOU, a reload's workers)
        become notifyd's expected workers."""
        self.server = server
        if old is None:
            # Only with preload_app, whose import comes next in the master,
            # and only to start: the arbiter is half set up (no master_pid
            # and no listeners yet). when_ready does the rest, and restarts
            # notifyd with the listen queues once gunicorn has bound them.
            if self.wanted is not None and server.cfg.preload_app:
                self._sync(server)
        elif new != old and self.process is not None:
            from . import _notify_instance
            _notify_instance(server.log, self.path, 'X_NOTIFYD_EXPECT=%d'
                             % new)

    def reload(self, server):
        """At a HUP: notifyd matches the new settings, then hears that the
        master reloads, before gunicorn starts the new workers."""
        self.sync(server)
        if self.process is not None and not self.handed_over:
            from . import reload_instance
            reload_instance(server.log, self.path)

    def sync(self, server):
        """Make the running notifyd match the settings: when_ready starts
        it if the first setup did not, and watches it from then on;
        on_reload starts, restarts or stops it as the reload asks."""
        self.server = server
        if not self.attached and self.wanted is not None:
            # Only now: gunicorn sets its own SIGCHLD handler in start().
            self._attach()
        proc = self.process
        if proc is not None and proc.exited():
            self._child_exited()  # it died before the handler was there
        self._sync(server)

    def _sync(self, server):
        self._flush()
        if self.handed_over or _reexec_pid(server):
            # The master a USR2 started holds the sockets, and runs notifyd
            # on them: this one starts none beside it.
            return
        if self.wanted is None:
            self._stop_all()
            self._close_sockets(server)
            return
        # Every address gunicorn listens on, as bound now: a HUP that
        # changed bind has already replaced the listeners.
        self.wanted.queues = _listen_queues(server)
        running = self.process
        if running is not None and running.settings == self.wanted \
                and self.retired_http is None:
            self.given_up = False
            return
        try:
            self._bind_notify(server)
        except OSError as err:
            server.log.error('notifyd: notify socket %s: %s; notifyd is not '
                             'started', self.path, err)
            return
        # The notifyd being replaced is told to stop first, so that it
        # reads no datagram once its successor runs; it is waited for only
        # after the successor is started, so that the probes it finishes
        # answering do not hold the health port's queue up meanwhile.
        old_master_notifyd = None
        if running is not None:
            server.log.info('notifyd: settings changed; restarting notifyd')
            self._terminate(running)
        if self.old_notifyd:
            old_master_notifyd = self._take_over(server)
        self.failures, self.given_up = 0, False
        if running is not None or old_master_notifyd is not None:
            # The one being replaced lets go of the state directory as it
            # stops reading; its successor would find it taken before.
            _await_unlocked(self.wanted.directory)
        self._spawn()
        if running is not None:
            self._await(running)
        if old_master_notifyd is not None:
            self._await_old(server, *old_master_notifyd)
        old = self.retired_http
        if old is not None:
            # Only now: what its notifyd left queued there had no one else
            # to answer it.
            old.close()
            self.retired_http = None

    def pre_exec(self, server):
        # In the child of a USR2, just before it becomes the new master.
        env = server.cfg.env_orig
        env.pop(HANDOFF, None)
        if self.http is None or self.notify is None or self.directory is None:
            return
        for sock in (self.notify, self.http):
            sock.set_inheritable(True)
        os.set_inheritable(self.directory.fd, True)
        pid = self.process.pid if self.process else ''
        env[HANDOFF] = 'notify=%d,http=%d,dir=%d,master=%d,pid=%s' % (
            self.notify.fileno(), self.http.fileno(), self.directory.fd,
            os.getppid(), pid)

    def post_fork(self, server, worker):
        # In a new worker: it must not hold the health port or notifyd's
        # sockets, or a worker orphaned by a killed master would.
        for sock in (self.http, self.notify, self.retired_http):
            if sock is not None:
                sock.close()
        if self.directory is not None:
            self.directory.close()
        for proc in [self.process] + self.retired:
            if proc is not None:
                proc.close()

    def on_exit(self, server):
        self.server = server
        self._flush()
        self.wanted = None
        if self.handed_over or _child_alive(_reexec_pid(server)):
            return  # the new master's notifyd, sockets and directory
        self._stop_all()
        self._close_sockets(server)

    # Process management.

    def _attach(self):
        # gunicorn's own SIGCHLD handler reaps with waitpid(-1); notifyd is
        # reaped through its pidfd first, in a wrapper around it.
        previous = signal.getsignal(signal.SIGCHLD)

        def on_child_exit(signum, frame):
            try:
                self._child_exited()
            except Exception:  # never break gunicorn's signal handling
                self.server.log.exception('notifyd: checking on notifyd')
            if callable(previous):
                previous(signum, frame)
            try:
                self._after_reap()
            except Exception:
                self.server.log.exception('notifyd: checking on notifyd')

        signal.signal(signal.SIGCHLD, on_child_exit)
        self.attached = True

    def _child_exited(self):
        for proc in list(self.retired):
            if proc.exited():
                proc.reap()
                self.retired.remove(proc)
        proc = self.process
        if proc is None or not proc.exited():
            return
        self.process = None
        status = proc.reap()
        log = self.server.log
        if self.server.reexec_pid:
            self.handed_over = True
            log.info('notifyd: notifyd (pid %d) %s: the new master (pid %d) '
                     'runs notifyd now', proc.pid, status,
                     self.server.reexec_pid)
            return
        quick = proc.uptime() < QUICK_EXIT
        self.failures = self.failures + 1 if quick else 0
        if quick and proc.code == USAGE_ERROR:
            self.given_up = True
            log.error('notifyd: notifyd (pid %d) %s at start: it refused its '
                      'arguments (see its error above); not starting it '
                      'again until a reload', proc.pid, status)
            return
        if self.failures >= QUICK_EXITS:
            self.given_up = True
            log.error('notifyd: notifyd (pid %d) %s, %d times in a row at '
                      'start; not starting it again until a reload',
                      proc.pid, status, self.failures)
            return
        log.warning('notifyd: notifyd (pid %d) %s; starting it again',
                    proc.pid, status)
        self._spawn()

    def _after_reap(self):
        # A new master that a USR2 started has gone before the old one:
        # the old master runs notifyd again.
        if self.handed_over and not self.server.reexec_pid:
            self.handed_over = False
            if self.wanted is not None and self.process is None:
                self.server.log.info('notifyd: the new master has exited; '
                                     'running notifyd again')
                self._spawn()

    def _spawn(self):
        log = self.server.log
        settings = self.wanted
        # notifyd writes gunicorn's error-log format into gunicorn's error
        # log, also under daemon = True, where standard error is /dev/null.
        master = str(os.getpid())
        argv = [settings.binary, '--socket', self.path,
                '--exit-with', master, '--main-pid', master,
                '--expect', str(self.server.num_workers or 0),
                '--log-format', 'gunicorn']
        argv += settings.flags()
        if self.supervisor is not None:
            argv += ['--systemd-ready', 'workers']
        argv += list(settings.args)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('LISTEN_', 'NOTIFY_SOCKET', 'WATCHDOG_'))
               and k != HANDOFF}
        if self.supervisor is not None:
            env['NOTIFY_SOCKET'] = self.supervisor
        env['LISTEN_FDS'] = '2'
        env['LISTEN_FDNAMES'] = 'notify:http'
        # SIGCHLD is held until the process is recorded, so that an exit at
        # once finds it in the wrapper rather than in gunicorn's waitpid.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        try:
            pid, pidfd = _fork_exec(argv, env, [self.notify.fileno(),
                                                self.http.fileno()],
                                    _error_log_fd(log))
            # A copy: the listen queues of self.wanted are filled in later.
            self.process = _Process(pid, pidfd, copy.copy(settings))
            # Said before SIGCHLD is let in: an exit at once is reported
            # after its start.
            host, port = self.http.getsockname()[:2]
            if ':' in host:
                host = '[%s]' % host
            log.info('notifyd: started %s (pid %d): health check on '
                     'http://%s:%d/, notify socket %s', settings.binary,
                     pid, host, port, self.path)
        except OSError as err:
            self.given_up = True
            log.error('notifyd: cannot run %s: %s; not starting it again '
                      'until a reload', settings.binary, err)
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _stop(self, proc):
        self._terminate(proc)
        self._await(proc)

    def _terminate(self, proc):
        # SIGTERM: notifyd stops reading datagrams and accepting at once,
        # then answers the connections it has accepted. The wrapper reaps it
        # if its SIGCHLD comes first.
        if proc is self.process:
            self.process = None
        self.retired.append(proc)
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _await(self, proc):
        try:
            if not proc.wait(STOP_TIMEOUT):
                self.server.log.warning('notifyd: notifyd (pid %d) did not '
                                        'stop; killing it', proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        except ProcessLookupError:
            pass
        proc.reap()
        if proc in self.retired:
            self.retired.remove(proc)

    def _stop_all(self):
        for proc in [self.process] + list(self.retired):
            if proc is not None:
                self._stop(proc)

    def _take_over(self, server):
        # The old master's notifyd reads the same sockets: it is told to
        # stop before ours starts, so that no datagram goes to a notifyd
        # that is about to exit. Returns (pid, pidfd) to wait on, or None.
        (pid, master), self.old_notifyd = self.old_notifyd, None
        try:
            pidfd = _old_notifyd(pid, master, self.path)
        except (OSError, ValueError) as err:
            server.log.info('notifyd: not stopping pid %d named by the old '
                            'master: %s', pid, err)
            return None
        server.log.info('notifyd: taking over from notifyd (pid %d) of '
                        'the old master', pid)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return pid, pidfd

    def _await_old(self, server, pid, pidfd):
        # It is the old master's child, which reaps it.
        try:
            if not select.select([pidfd], [], [], STOP_TIMEOUT)[0]:
                server.log.warning('notifyd: old notifyd (pid %d) did not '
                                   'stop; killing it', pid)
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [], STOP_TIMEOUT)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)

    # Sockets.

    def _bind_notify(self, server):
        if self.notify is not None:
            return
        base, name = os.path.split(os.path.dirname(self.path))
        for gone in _sweep(base):
            server.log.info('notifyd: removed %s, left by a master that is '
                            'gone', gone)
        directory = _SocketDir.make(os.path.join(base, name))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Credentials on every datagram, also those queued while
            # notifyd (re)starts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # The mode the file gets at bind: never more open than 0600.
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(self.path)
            uid, gid = server.cfg.uid, server.cfg.gid
            if os.geteuid() == 0 and (uid, gid) != (0, 0):
                # Workers run as gunicorn's user setting: they, the master
                # and root reach the socket, no one else.
                directory.hand_to(uid, gid)
        except OSError:
            sock.close()
            directory.remove()
            raise
        self.notify, self.directory = sock, directory

    def _close_sockets(self, server):
        # A master that a USR2 started, and whose old master still runs,
        # leaves the directory to it.
        remove = not (server.master_pid and server.master_pid == os.getppid())
        for name in ('http', 'notify', 'retired_http'):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
                setattr(self, name, None)
        self.http_bind = None
        if self.directory is not None:
            if remove:
                self.directory.remove()
            self.directory.close()
            self.directory = None

    def _flush(self):
        for level, line in self.messages:
            getattr(self.server.log, level)(line)
        self.messages = []


def _listen_queues(server):
    """Return gunicorn's listening addresses as notifyd's --listen-queue
    spells them: '127.0.0.1:8000', '[::1]:8000', 'unix:/run/app.sock'.
    Addresses notifyd cannot name (an abstract socket, an IPv6 zone) are
    left out."""
    addresses = []
    for listener in getattr(server, 'LISTENERS', None) or []:
        try:
            sock = getattr(listener, 'sock', listener)
            family, name = sock.family, sock.getsockname()
        except OSError:
            continue
        if family == socket.AF_UNIX:
            if isinstance(name, bytes) or not name or name.startswith('\0'):
                continue
            address = 'unix:' + os.path.abspath(name)
        elif family == socket.AF_INET:
            address = '%s:%d' % name[:2]
        elif family == socket.AF_INET6 and '%' not in name[0]:
            address = '[%s]:%d' % name[:2]
        else:
            continue
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


# _DIR_NAME is the name of a socket directory: notifyd- and 12 hex digits.
_DIR_NAME = re.compile(r'notifyd-[0-9a-f]{12}\Z')
_SOCKET_NAME = 'notify.sock'


def _private_path():
    # Chosen at config time, when the worker hooks need it; made at
    # when_ready. The name cannot be guessed, and mkdir fails rather than
    # use a directory someone else made.
    base = os.environ.get('RUNTIME_DIRECTORY', '').split(':')[0]
    base = base or tempfile.gettempdir()
    path = os.path.join(os.path.abspath(base),
                        'notifyd-' + secrets.token_hex(6), _SOCKET_NAME)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        path = os.path.join('/tmp', 'notifyd-' + secrets.token_hex(6),
                            _SOCKET_NAME)
    return path


class _SocketDir:
    """The directory of the notify socket, held by a descriptor and a lock.

    The master that makes it holds an exclusive flock on it for its life;
    a USR2 passes the descriptor, and so the lock, to the new master. A
    directory of ours whose lock nobody holds, and whose socket nobody
    reads, belongs to a master that was killed: the next master removes
    it. The directory stays root's when the workers run as another user,
    who reaches the socket through the directory's group, so that they
    cannot swap a file in it for a link. Everything in it is removed
    through the descriptor, never through a path.
    """

    def __init__(self, fd, path):
        self.fd = fd        # O_DIRECTORY descriptor, holding the lock
        self.path = path    # the directory's path

    @classmethod
    def make(cls, path):
        """Make the directory path, locked; raises OSError."""
        os.mkdir(path, 0o700)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError:
            os.rmdir(path)
            raise
        try:
            # Another master's sweep may have taken the lock of the empty
            # directory between mkdir and here, to remove it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:
                raise FileNotFoundError('%s was removed as it was made'
                                        % path)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, path)

    def owns(self, socket_path):
        """Whether socket_path names a socket in this directory."""
        try:
            held = os.fstat(self.fd)
            there = os.stat(os.path.dirname(socket_path),
                            follow_symlinks=False)
            sock = os.stat(_SOCKET_NAME, dir_fd=self.fd,
                           follow_symlinks=False)
        except OSError:
            return False
        return (os.path.basename(socket_path) == _SOCKET_NAME
                and (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
                and stat.S_ISSOCK(sock.st_mode))

    def hand_to(self, uid, gid):
        """Let the workers' user reach the socket in it, and no one else.

        Only the socket changes owner, without following a link, and the
        directory only its group: the workers' user can write nothing in
        it."""
        os.chown(_SOCKET_NAME, uid, gid, dir_fd=self.fd,
                 follow_symlinks=False)
        os.fchown(self.fd, -1, gid)
        os.fchmod(self.fd, 0o710)

    def remove(self):
        """Remove the socket and the directory, then let go of it."""
        try:
            os.unlink(_SOCKET_NAME, dir_fd=self.fd)
        except OSError:
            pass
        _rmdir_held(self.path, self.fd)
        self.close()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _rmdir_held(path, fd):
    # Removes the directory at path only while it is still the one fd holds.
    try:
        held = os.fstat(fd)
        there = os.stat(path, follow_symlinks=False)
        if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
            os.rmdir(path)
    except OSError:
        pass


def _sweep(base):
    """Remove the socket directories in base of masters that are gone.

    A directory is removed only when it is this user's, nobody holds its
    lock, and nobody reads its socket; another user's, or a live master's,
    is left alone. Returns the paths removed."""
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not _DIR_NAME.match(name):
            continue
        path = os.path.join(base, name)
        try:
            st = os.stat(path, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _socket_read(path):
                continue
            for entry in os.listdir(fd):
                os.unlink(entry, dir_fd=fd)
            _rmdir_held(path, fd)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _socket_read(directory):
    # Whether some process still holds the socket in directory: a master of
    # an older notifyd_gunicorn took no lock.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(os.path.join(directory, _SOCKET_NAME))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _verify_handoff(fields):
    """Return (notify, http, directory, old_notifyd) from the fields
    of a hand-over, once each proves to be what the parent master hands
    over; old_notifyd is (pid, master) of the old master's notifyd, or None.
    Raises ValueError or OSError saying what does not."""
    master = int(fields['master'])
    if not 0 < master == os.getppid():
        raise ValueError('master %d is not this process\'s parent' % master)
    if str(master) != os.environ.get('GUNICORN_PID'):
        raise ValueError('master %d is not $GUNICORN_PID' % master)
    notify = _inherited_socket(fields, 'notify', socket.AF_UNIX,
                               socket.SOCK_DGRAM)
    try:
        http = _inherited_socket(fields, 'http', None, socket.SOCK_STREAM)
        try:
            fd = _descriptor(fields, 'dir')
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ValueError('dir=%d is not a directory' % fd)
            directory = _SocketDir(fd, os.path.dirname(notify.getsockname()))
            if not directory.owns(notify.getsockname()):
                raise ValueError('notify=%d is not a socket in dir=%d'
                                 % (notify.fileno(), fd))
        except BaseException:
            http.detach()
            raise
    except BaseException:
        notify.detach()
        raise
    for sock in (notify, http):
        sock.set_inheritable(False)
    os.set_inheritable(fd, False)
    pid = int(fields['pid']) if fields.get('pid') else 0
    old_notifyd = (pid, master) if 0 < pid <= _PID_MAX else None
    return notify, http, directory, old_notifyd


# _PID_MAX is the largest pid Linux can give (PID_MAX_LIMIT, 2^22).
_PID_MAX = 1 << 22


def _descriptor(fields, name):
    fd = int(fields[name])
    if fd < 3:
        raise ValueError('%s=%d is a standard stream' % (name, fd))
    return fd


def _inherited_socket(fields, name, family, kind):
    # The socket at the descriptor fields names, when it is of family and
    # kind; a stream socket must be listening. Raises ValueError or OSError.
    fd = _descriptor(fields, name)
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise ValueError('%s=%d is not a socket' % (name, fd))
    sock = socket.socket(fileno=fd)
    try:
        families = (family,) if family else (socket.AF_INET, socket.AF_INET6)
        if sock.family not in families or sock.type != kind:
            raise ValueError('%s=%d is a socket of another kind' % (name, fd))
        if kind == socket.SOCK_STREAM and not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError('%s=%d is not listening' % (name, fd))
        if family == socket.AF_UNIX and not (
                isinstance(sock.getsockname(), str)
                and os.path.isabs(sock.getsockname())):
            raise ValueError('%s=%d is not bound to a path' % (name, fd))
    except BaseException:
        sock.detach()
        raise
    return sock


def _close_named(fields):
    # The descriptors a hand-over that is not believed names, when they are
    # what a hand-over passes: such a value is left over from an older
    # master, whose sockets would otherwise stay open here for good.
    for name in ('notify', 'http', 'dir'):
        try:
            fd = _descriptor(fields, name)
            mode = os.fstat(fd).st_mode
        except (KeyError, ValueError, OSError):
            continue
        if stat.S_ISSOCK(mode) or stat.S_ISDIR(mode):
            os.close(fd)


def _old_notifyd(pid, master, socket_path):
    """Return a pidfd for pid once it proves to be a live notifyd that is a
    child of master, running on socket_path; raises OSError or ValueError
    saying what it is not."""
    pidfd = os.pidfd_open(pid)
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            fields = f.read().rpartition(b')')[2].split()
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            argv = f.read().split(b'\0')
        # Read while the pidfd held the process: had it exited meanwhile,
        # and its pid gone to another, the pidfd would say so now.
        if select.select([pidfd], [], [], 0)[0]:
            raise ProcessLookupError('it has exited')
        if int(fields[1]) != master:
            raise ValueError('it is not a child of the old master (pid %d)'
                             % master)
        want = [b'--socket', os.fsencode(socket_path)]
        if not any(argv[i:i + 2] == want for i in range(len(argv))):
            raise ValueError('it is not a notifyd on %s' % socket_path)
    except BaseException:
        os.close(pidfd)
        raise
    return pidfd


# LOCK_FILE is the lock a notifyd holds in its state directory.
LOCK_FILE = '.notifyd.lock'


def _await_unlocked(directory):
    """Wait, up to STOP_TIMEOUT, until no notifyd holds directory's lock."""
    try:
        fd = os.open(os.path.join(directory, LOCK_FILE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # released at once, with the descriptor
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
    finally:
        os.close(fd)


def _reexec_pid(server):
    """The pid of the master a USR2 started, or 0. gunicorn's Arbiter runs
    the nworkers_changed hook from its setup, before it sets reexec_pid."""
    return getattr(server, 'reexec_pid', 0)


_manager = _Manager()
