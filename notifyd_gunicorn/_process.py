"""The notifyd process managed mode starts: where its binary is, what it
makes of the flags it would be given (notifyd --check), how it is forked and
executed with the sockets it is given, the pidfd the master holds it by, and
the lock it holds on its state directory.

Standard library only. Nothing here runs at import.
"""

import fcntl
import os
import select
import signal
import subprocess
import sys
import sysconfig
import time

# CHECK_TIMEOUT bounds notifyd --check, which answers in milliseconds.
CHECK_TIMEOUT = 5.0

# LOCK_FILE is the lock a notifyd holds in its state directory.
LOCK_FILE = '.notifyd.lock'

# Variables that are the master's own, never notifyd's: systemd's socket
# activation and notification variables, which managed mode sets itself,
# and the hand-over to a new master (NOTIFYD_GUNICORN_HANDOFF).
_MASTERS_OWN = ('LISTEN_', 'NOTIFY_SOCKET', 'WATCHDOG_', 'NOTIFYD_GUNICORN_')


def find_binary(configured=None):
    """Return the notifyd binary managed mode runs.

    It is configured, when given, else the notifyd installed next to the
    running interpreter: in the directory of sys.executable (a venv's bin,
    whether or not the venv is active) or in the interpreter's scripts
    directory. PATH is never searched. Raises LookupError with a one-line
    message when there is none.
    """
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return os.path.abspath(configured)
        raise LookupError('notifyd_binary %r: no executable file there'
                          % configured)
    places = []
    for place in (os.path.dirname(sys.executable),
                  sysconfig.get_path('scripts'),
                  sysconfig.get_path('scripts', '%s_user' % os.name)):
        if place and place not in places:
            places.append(place)
    for place in places:
        path = os.path.join(place, 'notifyd')
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise LookupError(
        'no notifyd binary in %s: install the notifyd wheel into the '
        'environment gunicorn runs in, or set notifyd_binary'
        % ' or '.join(places))


def environ(supervisor=None):
    """The environment notifyd runs in: the master's, but for what is the
    master's own; NOTIFY_SOCKET is the supervisor's when given. NOTIFYD_*
    variables, notifyd's own flags, pass."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_MASTERS_OWN)}
    if supervisor is not None:
        env['NOTIFY_SOCKET'] = supervisor
    return env


def check(binary, flags):
    """Return what notifyd at binary makes of flags, in the environment it
    would run in: a list of lines, one for each mistake, empty when there
    is none. Raises OSError when it cannot say."""
    # SIGCHLD is held until the check is reaped here, so that gunicorn's
    # handler, which reaps every child, never sees it.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        done = subprocess.run([binary, '--check'] + flags, env=environ(),
                              stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise OSError('%s --check did not answer within %gs'
                      % (binary, CHECK_TIMEOUT))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    lines = done.stderr.decode(errors='replace').splitlines()
    if done.returncode == 0:
        return []
    if done.returncode == 2 and lines:
        return [line.removeprefix('notifyd: ') for line in lines]
    raise OSError('%s --check exited with status %d: %s' % (
        binary, done.returncode, ' '.join(lines) or 'no output'))


def await_unlocked(directory, timeout):
    """Wait, up to timeout seconds, until no notifyd holds directory's
    lock."""
    try:
        fd = os.open(os.path.join(directory, LOCK_FILE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        deadline = time.monotonic() + timeout
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


class Pidfd:
    """A process held by a pidfd: waited for and signalled through it, so
    that a pid the kernel gives to another process meanwhile is never
    touched."""

    what = 'process'  # as the log names it

    def __init__(self, pid, pidfd):
        self.pid = pid
        self.pidfd = pidfd

    def exited(self):
        return self.wait(0)

    def wait(self, timeout):
        """Return whether the process exited within timeout seconds."""
        if self.pidfd is None:
            return True
        return bool(select.select([self.pidfd], [], [], timeout)[0])

    def signal(self, signum):
        if self.pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass

    def await_exit(self, timeout, log):
        """Wait up to timeout seconds for it to exit; then kill it, and wait
        as long again."""
        if not self.wait(timeout):
            log.warning('notifyd: %s (pid %d) did not stop; killing it',
                        self.what, self.pid)
            self.signal(signal.SIGKILL)
            self.wait(timeout)

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class _Process(Pidfd):
    """One notifyd the master started, its child."""

    what = 'notifyd'

    def __init__(self, pid, pidfd, settings):
        super().__init__(pid, pidfd)
        self.settings = settings
        self.started = time.monotonic()
        self.status = None  # set once reaped
        self.code = None    # the exit status, when it exited

    def reap(self):
        """Collect the exit status once the process has exited, and return
        it as words for the log: 'exited with status 1', 'was killed by
        signal 9'."""
        if self.status is None and self.pidfd is not None:
            try:
                result = os.waitid(os.P_PIDFD, self.pidfd,
                                   os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                # gunicorn's reap_workers reaped it first.
                result = None
                self.status = 'exited'
            if result is not None:
                if result.si_code == os.CLD_EXITED:
                    self.status = 'exited with status %d' % result.si_status
                    self.code = result.si_status
                else:
                    self.status = 'was killed by signal %d' % result.si_status
        if self.status is not None:
            self.close()
        return self.status

    def uptime(self):
        return time.monotonic() - self.started

    def await_exit(self, timeout, log):
        """Wait for it to exit, killing it after timeout seconds, and reap
        it."""
        super().await_exit(timeout, log)
        self.reap()


def _child_alive(pid):
    """Whether pid is a child of this process that has not exited."""
    if not pid:
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG
                         | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _error_log_fd(log):
    """Return the descriptor of gunicorn's error log (its errorlog file, or
    standard error for '-'), or None when it has none, as with syslog."""
    for handler in getattr(getattr(log, 'error_log', None), 'handlers', ()):
        try:
            return handler.stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
    return None


def _fork_exec(argv, env, fds, stderr=None):
    """Run argv with fds as descriptors 3, 4, ..., stderr (when not None)
    as its standard error, and LISTEN_PID set to its own pid, as socket
    activation passes sockets. Returns its pid and a pidfd; raises OSError
    when the program could not be run."""
    first = 3 + len(fds)
    # SIGCHLD is held until the pidfd is open, so that gunicorn's handler
    # cannot reap the child first.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    report_r, report_w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            _exec_child(argv, env, fds, stderr, first, report_w, mask)
        os.close(report_w)
        report_w = None
        pidfd = os.pidfd_open(pid)
        failure = b''
        while True:  # until exec closes the pipe, or the child reports
            chunk = os.read(report_r, 512)
            if not chunk:
                break
            failure += chunk
        if failure:
            os.close(pidfd)
            os.waitpid(pid, 0)
            raise OSError(failure.decode(errors='replace'))
        return pid, pidfd
    finally:
        os.close(report_r)
        if report_w is not None:
            os.close(report_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _exec_child(argv, env, fds, stderr, first, report_w, mask):
    # In the child, between fork and exec: every way out is os._exit.
    report = report_w
    try:
        report = fcntl.fcntl(report_w, fcntl.F_DUPFD_CLOEXEC, first)
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first) for fd in fds]
        if stderr is not None:
            os.dup2(fcntl.fcntl(stderr, fcntl.F_DUPFD_CLOEXEC, first), 2)
        for i, fd in enumerate(moved):
            os.dup2(fd, 3 + i)  # inheritable
        os.closerange(first, report)
        os.closerange(report + 1, os.sysconf('SC_OPEN_MAX'))
        os.setpgid(0, 0)  # a terminal's ^C goes to gunicorn, not notifyd
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.execve(argv[0], argv, dict(env, LISTEN_PID=str(os.getpid())))
    except BaseException as err:
        try:
            os.write(report, str(err).encode())
        except BaseException:
            pass
    finally:
        os._exit(127)
