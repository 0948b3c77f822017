"""Managed mode: the gunicorn master runs notifyd for its own workers.

At the end of a gunicorn config file, with the notifyd wheel installed in
the environment gunicorn runs in:

    import notifyd_gunicorn
    healthcheck_bind = '127.0.0.1:8001'
    notifyd_gunicorn.start(globals())

start() reads the settings of gunicorn_worker_healthcheck, with their
defaults, and three of its own (see _settings). Every setting that is wrong
is logged as one line in gunicorn's log, all of them at once; gunicorn boots
and serves all the same, without notifyd at the first start, with notifyd's
previous settings at a reload.

Where notifyd stands is one State, which only the hooks change. The rooms:
_settings reads and checks the settings, _sockets holds the sockets and the
socket directory, _handoff passes them on at USR2, _process runs notifyd,
and _chain puts the hooks in gunicorn's place.

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
import enum
import os
import signal
import socket

from . import _handoff, _settings
from ._chain import _MARK, _chain
from ._process import (_Process, _child_alive, _error_log_fd, _fork_exec,
                       await_unlocked, environ)
from ._sockets import Sockets, private_path

__all__ = ['start']

# QUICK_EXIT is how soon after its start an exit counts as failing at
# start; QUICK_EXITS of those in a row leave notifyd stopped, so a notifyd
# that cannot run does not fork again on every SIGCHLD.
QUICK_EXIT = 2.0
QUICK_EXITS = 5

# STOP_TIMEOUT bounds how long the master waits for notifyd to stop on
# SIGTERM before it kills it: notifyd stops in milliseconds.
STOP_TIMEOUT = 5.0

# USAGE_ERROR is notifyd's exit status for arguments it refuses.
USAGE_ERROR = 2


def start(ns):
    """Run notifyd from the gunicorn master, configured by the namespace ns.

    ns is the config file's globals(). Call start() at the end of the file,
    after your own hooks, which it chains before its own, as install() does.
    It never raises: a setting that is wrong is logged in gunicorn's log.
    """
    settings, problems = _settings.read(ns)
    if _manager.configure(settings, problems):
        from . import install
        ns['notifyd_socket'] = _manager.sockets.path
        install(ns, _reload=False)
    for name, hook in _manager.hooks().items():
        previous = ns.get(name)
        if getattr(previous, _MARK, False):
            previous = getattr(previous, '_notifyd_previous')
        ns[name] = _chain(name, previous, hook)


class State(enum.Enum):
    """Where the master's notifyd stands. Only the hooks change it, and
    only through _Manager._become."""

    # None runs: none is wanted (healthcheck_bind is None, or the first
    # settings were wrong), or it is not started yet, before the first
    # worker, or it was just stopped.
    IDLE = 'idle'
    # _Manager.process is the running notifyd; in no other state is there
    # one.
    RUNNING = 'running'
    # It refused its flags, kept dying at start, or could not be run: it is
    # started again at the next reload, not before.
    GIVEN_UP = 'given up'
    # The master a USR2 started runs notifyd on this master's sockets: this
    # one runs none while that master lives, and runs one again when it
    # goes first.
    HANDED_OVER = 'handed over'
    # The master is exiting, and notifyd is stopped.
    EXITED = 'exited'


class _Manager:
    """The one notifyd of this master. It is module state, so that it
    survives the config file being run again at each HUP: gunicorn keeps
    its modules in sys.modules across reloads."""

    def __init__(self):
        self.state = State.IDLE
        self.process = None      # the running notifyd, in RUNNING only
        self.wanted = None       # the Settings notifyd should run with
        self.sockets = None      # Sockets, from the first config run on
        self.old_notifyd = None  # (pid, master) of a USR2's old notifyd
        self.supervisor = None   # the master's NOTIFY_SOCKET, taken over
        self.retired = []        # notifyd processes being stopped
        self.failures = 0        # quick exits in a row
        self.messages = []       # (level, line) waiting for gunicorn's log
        self.server = None       # gunicorn's arbiter, from the first hook
        self.watching = False    # the SIGCHLD handler is wrapped

    def _become(self, state, process=None):
        self.state, self.process = state, process

    # Config time: the config file is being run, in the master. gunicorn's
    # logger is not set up yet, so lines wait for the next hook.

    def configure(self, settings, problems):
        """Take the settings of a config run, or its problems. Returns
        whether the worker hooks are to be installed, on sockets.path."""
        if self.sockets is None:
            self._adopt()
        running = self.wanted is not None
        if settings is not None:
            try:
                self.sockets.bind_http(settings.bind)
            except OSError as err:
                settings, problems = None, [str(err)]
        if problems:
            then = ('notifyd keeps its previous settings' if running
                    else 'notifyd is not started')
            for problem in problems:
                self._say('error', '%s; %s' % (problem, then))
            return running
        if settings is None:
            self._say('info', 'healthcheck_bind is None: notifyd is not %s'
                      % ('running any more' if running else 'started'))
            self.wanted = None
            return False
        if self.supervisor is None:
            # Before gunicorn reads it: its READY=1 comes before any worker.
            self.supervisor = os.environ.pop('NOTIFY_SOCKET', None)
        self.wanted = settings
        return True

    def _adopt(self):
        # A master started by USR2 takes the sockets its parent handed over;
        # any other makes its own.
        try:
            handoff = _handoff.take()
        except ValueError as err:
            self._say('warning', str(err))
            handoff = None
        if handoff is None:
            self.sockets = Sockets(private_path())
            return
        self.sockets = Sockets(handoff.notify.getsockname(), handoff.notify,
                               handoff.http, handoff.directory)
        self.old_notifyd = handoff.old_notifyd

    def _say(self, level, line):
        message = (level, 'notifyd: ' + line)
        if message not in self.messages:  # start() twice in one file
            self.messages.append(message)

    def _flush(self):
        for level, line in self.messages:
            getattr(self.server.log, level)(line)
        self.messages = []

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
        elif new != old and self.state is State.RUNNING:
            from . import _notify_instance
            _notify_instance(server.log, self.sockets.path,
                             'X_NOTIFYD_EXPECT=%d' % new)

    def reload(self, server):
        """At a HUP: notifyd matches the new settings, a notifyd given up on
        is tried again, and then it hears that the master reloads, before
        gunicorn starts the new workers."""
        if self.state is State.GIVEN_UP:
            self._become(State.IDLE)
        self.sync(server)
        if self.state is State.RUNNING:
            from . import reload_instance
            reload_instance(server.log, self.sockets.path)

    def sync(self, server):
        """Make the running notifyd match the settings: when_ready starts
        it if the first setup did not, and watches it from then on;
        on_reload starts, restarts or stops it as the reload asks."""
        self.server = server
        if not self.watching and self.wanted is not None:
            # Only now: gunicorn sets its own SIGCHLD handler in start().
            self._watch()
        if self.state is State.RUNNING and self.process.exited():
            self._child_exited()  # it died before the handler was there
        self._sync(server)

    def _sync(self, server):
        self._flush()
        if self.state is State.GIVEN_UP:
            return  # until the next reload
        if self.state is State.HANDED_OVER or _reexec_pid(server):
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
                and self.sockets.retired_http is None:
            return
        try:
            self.sockets.bind_notify(_workers_owner(server),
                                     lambda line: server.log.info(
                                         'notifyd: ' + line))
        except OSError as err:
            server.log.error('notifyd: notify socket %s: %s; notifyd is not '
                             'started', self.sockets.path, err)
            return
        self._replace(server, running)

    def _replace(self, server, running):
        # The notifyd being replaced, ours or the old master's, is told to
        # stop first, so that it reads no datagram once its successor runs;
        # it is waited for only after the successor is started, so that the
        # probes it finishes answering do not hold the health port's queue
        # up meanwhile.
        if running is not None:
            server.log.info('notifyd: settings changed; restarting notifyd')
            self._terminate(running)
        predecessor = self._take_over(server) if self.old_notifyd else None
        self.failures = 0
        if running is not None or predecessor is not None:
            # The one being replaced lets go of the state directory as it
            # stops reading; its successor would find it taken before.
            await_unlocked(self.wanted.directory, STOP_TIMEOUT)
        self._spawn()
        if running is not None:
            self._await(running)
        if predecessor is not None:
            predecessor.await_exit(STOP_TIMEOUT, server.log)
        self.sockets.close_retired_http()

    def pre_exec(self, server):
        # In the child of a USR2, just before it becomes the new master.
        env = server.cfg.env_orig
        env.pop(_handoff.HANDOFF, None)
        sockets = self.sockets
        if sockets is None or not sockets.ready() or sockets.directory is None:
            return
        pid = self.process.pid if self.process is not None else None
        env[_handoff.HANDOFF] = _handoff.encode(sockets, pid)

    def post_fork(self, server, worker):
        # In a new worker: nothing of notifyd's stays open there.
        if self.sockets is not None:
            self.sockets.close_in_worker()
        for proc in [self.process] + self.retired:
            if proc is not None:
                proc.close()

    def on_exit(self, server):
        self.server = server
        self._flush()
        self.wanted = None
        if self.state is State.HANDED_OVER \
                or _child_alive(_reexec_pid(server)):
            return  # the new master's notifyd, sockets and directory
        self._stop_all()
        self._close_sockets(server)
        self._become(State.EXITED)

    # Process management.

    def _watch(self):
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
        self.watching = True

    def _child_exited(self):
        for proc in list(self.retired):
            if proc.exited():
                proc.reap()
                self.retired.remove(proc)
        proc = self.process
        if self.state is not State.RUNNING or not proc.exited():
            return
        status = proc.reap()
        log = self.server.log
        if self.server.reexec_pid:
            self._become(State.HANDED_OVER)
            log.info('notifyd: notifyd (pid %d) %s: the new master (pid %d) '
                     'runs notifyd now', proc.pid, status,
                     self.server.reexec_pid)
            return
        quick = proc.uptime() < QUICK_EXIT
        self.failures = self.failures + 1 if quick else 0
        if quick and proc.code == USAGE_ERROR:
            self._become(State.GIVEN_UP)
            log.error('notifyd: notifyd (pid %d) %s at start: it refused its '
                      'arguments (see its error above); not starting it '
                      'again until a reload', proc.pid, status)
        elif self.failures >= QUICK_EXITS:
            self._become(State.GIVEN_UP)
            log.error('notifyd: notifyd (pid %d) %s, %d times in a row at '
                      'start; not starting it again until a reload',
                      proc.pid, status, self.failures)
        else:
            log.warning('notifyd: notifyd (pid %d) %s; starting it again',
                        proc.pid, status)
            self._spawn()

    def _after_reap(self):
        # A new master that a USR2 started has gone before the old one:
        # the old master runs notifyd again.
        if self.state is State.HANDED_OVER and not self.server.reexec_pid:
            self._become(State.IDLE)
            if self.wanted is not None:
                self.server.log.info('notifyd: the new master has exited; '
                                     'running notifyd again')
                self._spawn()

    def _spawn(self):
        log = self.server.log
        settings = self.wanted
        # notifyd writes gunicorn's error-log format into gunicorn's error
        # log, also under daemon = True, where standard error is /dev/null.
        master = str(os.getpid())
        argv = [settings.binary, '--socket', self.sockets.path,
                '--exit-with', master, '--main-pid', master,
                '--expect', str(self.server.num_workers or 0),
                '--log-format', 'gunicorn']
        argv += settings.flags()
        if self.supervisor is not None:
            argv += ['--systemd-ready', 'workers']
        argv += list(settings.args)
        env = dict(environ(self.supervisor), LISTEN_FDS='2',
                   LISTEN_FDNAMES='notify:http')
        # SIGCHLD is held until the process is recorded, so that an exit at
        # once finds it in the wrapper rather than in gunicorn's waitpid.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        try:
            pid, pidfd = _fork_exec(argv, env, self.sockets.fds(),
                                    _error_log_fd(log))
            # A copy: the listen queues of self.wanted are filled in later.
            self._become(State.RUNNING,
                         _Process(pid, pidfd, copy.copy(settings)))
            # Said before SIGCHLD is let in: an exit at once is reported
            # after its start.
            log.info('notifyd: started %s (pid %d): health check on %s, '
                     'notify socket %s', settings.binary, pid,
                     self.sockets.http_url(), self.sockets.path)
        except OSError as err:
            self._become(State.GIVEN_UP)
            log.error('notifyd: cannot run %s: %s; not starting it again '
                      'until a reload', settings.binary, err)
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
            self._become(State.IDLE)
        self.retired.append(proc)
        proc.signal(signal.SIGTERM)

    def _await(self, proc):
        proc.await_exit(STOP_TIMEOUT, self.server.log)
        if proc in self.retired:
            self.retired.remove(proc)

    def _stop_all(self):
        for proc in [self.process] + list(self.retired):
            if proc is not None:
                self._stop(proc)

    def _take_over(self, server):
        # The old master's notifyd reads the same sockets: it is told to
        # stop before ours starts, so that no datagram goes to a notifyd
        # that is about to exit. Returns it, to wait on, or None.
        (pid, master), self.old_notifyd = self.old_notifyd, None
        try:
            old = _handoff.OldNotifyd(pid, master, self.sockets.path)
        except (OSError, ValueError) as err:
            server.log.info('notifyd: not stopping pid %d named by the old '
                            'master: %s', pid, err)
            return None
        server.log.info('notifyd: taking over from notifyd (pid %d) of '
                        'the old master', pid)
        old.signal(signal.SIGTERM)
        return old

    def _close_sockets(self, server):
        # A master that a USR2 started, and whose old master still runs,
        # leaves the directory to it.
        self.sockets.close(remove=not (server.master_pid
                                       and server.master_pid == os.getppid()))


def _workers_owner(server):
    """(uid, gid) the notify socket goes to: gunicorn's user and group
    setting, when a root master runs its workers as another user; else
    None, and it stays the master's."""
    uid, gid = server.cfg.uid, server.cfg.gid
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        return uid, gid
    return None


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


def _reexec_pid(server):
    """The pid of the master a USR2 started, or 0. gunicorn's Arbiter runs
    the nworkers_changed hook from its setup, before it sets reexec_pid."""
    return getattr(server, 'reexec_pid', 0)


_manager = _Manager()
