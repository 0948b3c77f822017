"""End to end: the wheel, built from a clean clone, in a fresh venv, run by
gunicorn in managed mode.

Run from the repository root with the interpreter Debian's gunicorn runs on:

    /usr/bin/python3 -m unittest discover -s tests/wheel

The clone is of the committed tree (HEAD): what CI builds. The venv is made
with --system-site-packages for Debian's gunicorn, and gunicorn runs as
venv/bin/python -m gunicorn with PATH lacking the venv's bin, as a systemd
unit runs it. Every port is chosen by the kernel.
"""

import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# DEADLINE bounds every wait: it stops a broken run, it times nothing.
DEADLINE = 20.0

# The ELF e_machine values of the architectures the wheel is built for.
ELF_MACHINES = {'x86_64': 62, 'aarch64': 183}
# The wheel's platform tag: manylinux and musllinux, as its static binaries
# allow (tests/release checks that they are static).
PLATFORM = ('manylinux_2_17_{0}.manylinux2014_{0}.musllinux_1_1_{0}'
            .format(os.uname().machine))

HEALTH_AT = re.compile(r'notifyd: started (\S+) \(pid (\d+)\): health check '
                       r'on http://([^/]+)/')
APP_AT = re.compile(r'Listening at: http://(\S+) \((\d+)\)')


def run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          **kwargs)


def wait_for(what, cond):
    deadline = time.monotonic() + DEADLINE
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(0.02)


def get(url, timeout=5):
    """Return (status, body) of GET url; raises OSError when no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rpartition(')')[2].split()[0] not in 'ZX'
    except OSError:
        return False


def children(pid):
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            return sorted(int(p) for p in f.read().split() if alive(int(p)))
    except OSError:
        return []


def exe(pid):
    try:
        return os.readlink('/proc/%d/exe' % pid)
    except OSError:
        return None


def port_refused(address):
    host, port = address.rsplit(':', 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def elf_machine(path):
    with open(path, 'rb') as f:
        head = f.read(20)
    assert head[:4] == b'\x7fELF', '%s is not an ELF file' % path
    return int.from_bytes(head[18:20], 'little')


class Prober:
    """Probes a health URL every interval (50 ms) in a thread of the test,
    each probe on a new connection with timeout, and keeps every outcome.
    While the test holds between(), no probe is in flight."""

    def __init__(self, url, interval=0.05, timeout=5):
        self.url = url
        self.interval, self.timeout = interval, timeout
        self.answers = []
        self.failures = []
        self.between = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with self.between:
                try:
                    self.answers.append(get(self.url, self.timeout))
                except OSError as err:
                    self.failures.append(repr(err))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self


def sysconfig_purelib(python):
    """Return the site-packages directory of the interpreter python."""
    return run(python, '-c', 'import sysconfig; '
               'print(sysconfig.get_path("purelib"))').stdout.strip()


class ManagedTestCase(unittest.TestCase):
    """The wheel, built and installed into a venv, and helpers to run
    gunicorn with it in managed mode."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='nd-wheel')
        cls.src = os.path.join(cls.tmp, 'src')
        run('git', 'clone', '--quiet', ROOT, cls.src)
        with open(os.path.join(cls.src, 'VERSION')) as f:
            cls.version = f.read().strip()
        run(sys.executable, '-m', 'build', '--wheel', '--no-isolation',
            cwd=cls.src)
        cls.wheels = os.listdir(os.path.join(cls.src, 'dist'))
        cls.venv = os.path.join(cls.tmp, 'venv')
        run(sys.executable, '-m', 'venv', '--system-site-packages', cls.venv)
        cls.python = os.path.join(cls.venv, 'bin', 'python')
        run(cls.python, '-m', 'pip', 'install', '--no-index', '--quiet',
            os.path.join(cls.src, 'dist', cls.wheels[0]))
        cls.notifyd = os.path.join(cls.venv, 'bin', 'notifyd')

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='run', dir=self.tmp)
        self.state = os.path.join(self.dir, 'state')
        os.mkdir(self.state)

    def run(self, result=None):
        # A failure shows the gunicorn log of the run that failed.
        failures = len(result.failures) + len(result.errors) if result else 0
        outcome = super().run(result)
        if result and len(result.failures) + len(result.errors) > failures:
            try:
                sys.stderr.write('\ngunicorn log of %s:\n%s\n'
                                 % (self.id(), self.log()))
            except OSError:
                pass
        return outcome

    # Helpers.

    def config(self, **settings):
        """Write gunicorn.conf.py: the seed's configuration, with one import
        and one call changed, and settings on top."""
        values = {
            'bind': '127.0.0.1:0',
            'workers': 2,
            'healthcheck_bind': '127.0.0.1:0',
            'healthcheck_require_workers': 2,
            'healthcheck_directory': self.state,
            'healthcheck_filename': 'worker-{}.state',
        }
        values.update(settings)
        lines = ['import notifyd_gunicorn']
        lines += ['%s = %r' % item for item in values.items()]
        lines += ['notifyd_gunicorn.start(globals())']
        path = os.path.join(self.dir, 'gunicorn.conf.py')
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        return path

    def gunicorn(self, _app='hello:app', _env=(), _wait=True, _pass_fds=(),
                 **settings):
        """Start gunicorn on a config of settings, with _env added to its
        environment and _pass_fds open in it; return its master, once it
        listens unless _wait is false. An app of the test's own (slow_app)
        is in self.dir."""
        config = self.config(**settings)
        log = open(os.path.join(self.dir, 'gunicorn.log'), 'w')
        env = dict(os.environ, PATH='/usr/bin:/bin')
        env.pop('VIRTUAL_ENV', None)
        env.update(_env)
        chdir = (self.dir if _app != 'hello:app'
                 else os.path.join(self.src, 'examples', 'gunicorn'))
        master = subprocess.Popen(
            [self.python, '-m', 'gunicorn', '--config', config,
             '--chdir', chdir, _app],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
            start_new_session=True, pass_fds=_pass_fds)
        log.close()
        self.addCleanup(self.kill_all, master)
        self.master = master
        if _wait:
            self.app = wait_for('gunicorn to listen',
                                lambda: self.match(APP_AT))
        return master

    def kill_all(self, master):
        try:
            os.killpg(master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        master.wait()
        for pid in getattr(self, 'strays', []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self):
        with open(os.path.join(self.dir, 'gunicorn.log')) as f:
            return f.read()

    def match(self, pattern, after=0):
        m = None
        for m in pattern.finditer(self.log(), after):
            pass
        return m

    def notifyd_started(self, after=0):
        """Wait for the master's "started" line after offset after; return
        (pid, health URL)."""
        m = wait_for('notifyd to start', lambda: self.match(HEALTH_AT, after))
        self.assertEqual(m.group(1), self.notifyd)
        return int(m.group(2)), 'http://%s/' % m.group(3)

    def notifyd_children(self, master):
        return [p for p in children(master) if exe(p) == self.notifyd]

    def workers(self, master):
        return [p for p in children(master) if exe(p) != self.notifyd]

    def wait_health(self, url, status, body):
        last = []

        def answered():
            try:
                last[:] = [get(url)]
            except OSError as err:
                last[:] = [err]
            return last[0] == (status, body)
        try:
            wait_for('health %d %r' % (status, body), answered)
        except AssertionError:
            self.fail('health never became %d %r; last %r'
                      % (status, body, last))

    def state_files(self, pids):
        """Wait until the state directory holds exactly the files of pids:
        a file trails its worker's count by a moment."""
        want = sorted('worker-%d.state' % p for p in pids)

        def listed():
            # notifyd's lock on its state directory is no state file.
            return sorted(n for n in os.listdir(self.state)
                          if n != '.notifyd.lock')
        try:
            wait_for('state files', lambda: listed() == want)
        except AssertionError:
            self.assertEqual(listed(), want)

    def error_lines(self):
        return [line for line in self.log().splitlines()
                if '[ERROR] notifyd: ' in line]


class WheelTest(ManagedTestCase):

    # The wheel itself.

    def test_wheel_name_tag_binaries_and_version(self):
        self.assertEqual(self.wheels, ['notifyd-%s-py3-none-%s.whl'
                                       % (self.version, PLATFORM)])
        for name in ('notifyd', 'notify'):
            path = os.path.join(self.venv, 'bin', name)
            self.assertTrue(os.access(path, os.X_OK), path)
            self.assertEqual(elf_machine(path),
                             ELF_MACHINES[os.uname().machine])
            out = run(path, '--version').stdout
            self.assertEqual(out, '%s %s\n' % (name, self.version))
        out = run(self.python, '-m', 'pip', 'show', 'notifyd').stdout
        self.assertIn('Version: %s\n' % self.version, out)
        # No generic module, and no example, reaches the import path.
        out = run(self.python, '-m', 'pip', 'show', '--files', 'notifyd')
        modules = {line.strip().split('/')[0] for line in
                   out.stdout.split('Files:')[1].splitlines()
                   if line.strip() and not line.strip().startswith('..')}
        self.assertEqual({m for m in modules if not m.endswith('-info')},
                         {'notifyd', 'notifyd_gunicorn'})

    def test_notifyd_package_imports_from_the_wheel(self):
        # From a directory outside the clone, so that only the installed
        # packages can be imported.
        out = run(self.python, '-c', 'import notifyd.asgi, notifyd.celery, '
                  'notifyd_gunicorn; print(notifyd.asgi.__file__); '
                  'print(notifyd_gunicorn.__file__)', cwd=self.dir).stdout
        site = sysconfig_purelib(self.python)
        self.assertEqual(out.splitlines(), [
            os.path.join(site, 'notifyd', 'asgi.py'),
            os.path.join(site, 'notifyd_gunicorn', '__init__.py')])

    # Managed mode.

    def test_serves_counts_and_survives_hup_and_kill(self):
        master = self.gunicorn()
        pid, url = self.notifyd_started()
        self.assertEqual(self.notifyd_children(master.pid), [pid])
        self.wait_health(url, 200, '2 workers ready\n')
        workers = self.workers(master.pid)
        self.assertEqual(len(workers), 2)
        self.state_files(workers)
        sock = re.search(r'notify socket (\S+)', self.log()).group(1)
        self.assertEqual(os.stat(os.path.dirname(sock)).st_mode & 0o777,
                         0o700)

        # A HUP: the same notifyd answers every probe.
        prober = Prober(url)
        mark = len(self.log())
        master.send_signal(signal.SIGHUP)
        wait_for('new workers', lambda: not set(workers) & set(
            self.workers(master.pid)) and len(self.workers(master.pid)) == 2)
        self.wait_health(url, 200, '2 workers ready\n')
        prober.stop()
        self.assertEqual(prober.failures, [])
        self.assertTrue(prober.answers)
        self.assertEqual(self.notifyd_children(master.pid), [pid])
        self.assertNotIn('notifyd: started', self.log()[mark:])

        # A SIGKILLed notifyd whose state files are gone is started again
        # and counts the workers from their re-announcement alone.
        prober = Prober(url)
        mark = len(self.log())
        # Stopped between two probes: a probe it had accepted would be cut
        # by the SIGKILL, which no stop can prevent. Probes sent from here on
        # wait in the queue of the port the master holds.
        with prober.between:
            os.kill(pid, signal.SIGSTOP)
        for name in os.listdir(self.state):
            os.remove(os.path.join(self.state, name))
        os.kill(pid, signal.SIGKILL)
        again, url = self.notifyd_started(after=mark)
        self.assertNotEqual(again, pid)
        self.assertIn('[WARNING] notifyd: notifyd (pid %d) was killed by '
                      'signal 9; starting it again' % pid, self.log()[mark:])
        # Reaped by managed mode, not taken for a worker by gunicorn.
        self.assertNotIn('Worker with pid %d ' % pid, self.log())
        self.wait_health(url, 200, '2 workers ready\n')
        prober.stop()
        self.assertEqual(prober.failures, [])
        self.assertEqual(self.notifyd_children(master.pid), [again])

        # A HUP that changes a setting applies it. Two workers never make
        # three: the answer tells the truth when the reload's grace ends.
        self.config(healthcheck_require_workers=3,
                    healthcheck_reload_grace=0.5)
        before = set(self.workers(master.pid))
        mark = len(self.log())
        master.send_signal(signal.SIGHUP)
        changed, url = self.notifyd_started(after=mark)
        self.assertNotEqual(changed, again)
        self.wait_health(url, 500, '2 workers ready\n')
        # The reload's workers are ready before the TERM: a worker still
        # booting has not set up its signal handlers, and gunicorn would
        # wait its graceful timeout for it.
        def reloaded():
            now = self.workers(master.pid)
            return len(now) == 2 and not before & set(now) and now
        self.state_files(wait_for('the reload\'s workers', reloaded))

        # TERM: nothing holds the health port, and the socket is gone.
        master.send_signal(signal.SIGTERM)
        master.wait(DEADLINE)
        wait_for('notifyd to exit', lambda: not alive(changed))
        wait_for('the health port to be free',
                 lambda: port_refused(url[len('http://'):-1]))
        self.assertFalse(os.path.exists(os.path.dirname(sock)))

    def test_one_log_in_gunicorns_format_under_daemon(self):
        # gunicorn's errorlog is a file and the master daemonizes, so its
        # standard error is /dev/null: notifyd's lines reach the file all
        # the same, in gunicorn's format.
        errorlog = os.path.join(self.dir, 'error.log')
        pidfile = os.path.join(self.dir, 'gunicorn.pid')
        config = self.config(errorlog=errorlog, daemon=True, pidfile=pidfile,
                             notifyd_args=['--log-level', 'debug'])
        env = dict(os.environ, PATH='/usr/bin:/bin')
        env.pop('VIRTUAL_ENV', None)
        with open(os.path.join(self.dir, 'gunicorn.log'), 'w') as out:
            run(self.python, '-m', 'gunicorn', '--config', config,
                '--chdir', os.path.join(self.src, 'examples', 'gunicorn'),
                'hello:app', stdin=subprocess.DEVNULL, env=env, cwd=self.dir)
        def master_pid():
            try:
                with open(pidfile) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return None
        master = int(wait_for('the pid file', master_pid))
        self.addCleanup(self.kill_daemon, master)

        def text():
            with open(errorlog) as f:
                return f.read()
        started = wait_for('the master to start notifyd', lambda: HEALTH_AT
                           .search(text()))
        pid, url = int(started.group(2)), 'http://%s/' % started.group(3)
        stamp = r'\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] '
        line = re.compile(r'^%s\[%d\] \[INFO\] notifyd: notifyd started '
                          r'socket=\S+ bind=127\.0\.0\.1:\d+ require=2 '
                          % (stamp, pid), re.M)
        wait_for("notifyd's start line", lambda: line.search(text()))
        self.wait_health(url, 200, '2 workers ready\n')
        victim = self.workers(master)[0]
        os.kill(victim, signal.SIGKILL)
        death = re.compile(r'^%s\[%d\] \[DEBUG\] notifyd: worker left '
                           r'component=registry pid=%d reason=exited$'
                           % (stamp, pid, victim), re.M)
        try:
            wait_for("notifyd's line on the dead worker",
                     lambda: death.search(text()))
        except AssertionError:
            self.fail('no line on worker %d in %s:\n%s'
                      % (victim, errorlog, text()))
        # gunicorn's own lines are in the same file, in the same format;
        # notifyd writes no line of slog's own format.
        theirs = re.compile(r'^%s\[%d\] \[WARNING\] Worker with pid %d '
                            r'was terminated due to signal 9$'
                            % (stamp, master, victim), re.M)
        wait_for("gunicorn's line on the dead worker",
                 lambda: theirs.search(text()))
        self.assertNotIn('level=', text())
        self.assertNotIn('msg=', text())
        with open(os.path.join(self.dir, 'gunicorn.log')) as f:
            self.assertEqual(f.read(), '')

    def kill_daemon(self, master):
        workers = self.workers(master)
        notifyd = self.notifyd_children(master)
        try:
            os.kill(master, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in workers + notifyd:
            wait_for('pid %d to exit' % pid, lambda: not alive(pid))

    def test_queue_time_of_every_bind_without_configuration(self):
        app_sock = os.path.join(self.dir, 'app.sock')
        master = self.gunicorn(bind=['127.0.0.1:0', 'unix:' + app_sock],
                               backlog=2, timeout=30)
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        tcp = self.app.group(1).split(',')[0]
        host, port = tcp.rsplit(':', 1)
        queue = '{addr="%s"}' % tcp
        unix_queue = '{addr="unix:%s"}' % app_sock

        def metric(name, labels):
            body = get(url + 'metrics')[1]
            m = re.search(r'^%s%s (\S+)$' % (re.escape(name),
                                             re.escape(labels)), body, re.M)
            self.assertIsNotNone(m, '%s%s not in /metrics' % (name, labels))
            return float(m.group(1))

        def busy():
            # Both workers on a 4 s request, as notifyd counts them.
            sleepers = [socket.create_connection((host, int(port)),
                                                 timeout=DEADLINE)
                        for _ in range(2)]
            for c in sleepers:
                self.addCleanup(c.close)
                c.sendall(b'GET /sleep?s=4 HTTP/1.0\r\n\r\n')
            wait_for('both workers busy', lambda: json.loads(
                get(url + 'status')[1])['busy_workers'] == 2)
            return sleepers

        def queued(family, address, n):
            conns = []
            for _ in range(n):
                c = socket.socket(family, socket.SOCK_STREAM)
                self.addCleanup(c.close)
                c.settimeout(DEADLINE)
                c.connect(address)
                c.sendall(b'GET / HTTP/1.0\r\n\r\n')
                conns.append(c)
            return conns

        def served(conns):
            for c in conns:
                answer = b''
                while True:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                self.assertTrue(answer.startswith(b'HTTP/1.0 200'), answer)

        # A burst nobody scrapes during: the peak still shows it after.
        burst = busy()
        served(queued(socket.AF_INET, (host, int(port)), 3))
        served(burst)
        self.assertGreaterEqual(metric('notifyd_listen_queue_peak', queue), 3)
        self.assertEqual(metric('notifyd_listen_queue_length', queue), 0)

        # Three requests queued, and two on the unix: bind. The oldest
        # one's age grows to a second; each read of it lies between the
        # test's own clock readings around it: no older than the first
        # request, no younger than the last, less the 100 ms the reading
        # may be cached and a kernel tick.
        burst = busy()
        sent = time.monotonic()
        waiting = queued(socket.AF_INET, (host, int(port)), 3)
        connected = time.monotonic()
        waiting += queued(socket.AF_UNIX, app_sock, 2)
        wait_for('3 queued', lambda: metric('notifyd_listen_queue_length',
                                            queue) == 3)

        def aged():
            before = time.monotonic()
            oldest = metric('notifyd_listen_queue_oldest_seconds', queue)
            after = time.monotonic()
            self.assertLessEqual(oldest, after - sent + 0.01)
            self.assertGreaterEqual(oldest, before - connected - 0.15)
            return oldest >= 1
        wait_for('the oldest request a second old', aged)
        self.assertEqual(metric('notifyd_listen_queue_length', queue), 3)
        self.assertEqual(metric('notifyd_listen_queue_length', unix_queue), 2)
        self.assertGreaterEqual(metric('notifyd_listen_queue_peak',
                                       unix_queue), 2)

        # Ten more on the full queue: the kernel drops them, and counts.
        self.assertEqual(metric('notifyd_listen_queue_drops_total', queue), 0)
        extra = []
        for _ in range(10):
            c = socket.socket()
            self.addCleanup(c.close)
            c.setblocking(False)
            c.connect_ex((host, int(port)))
            extra.append(c)
        wait_for('drops', lambda: metric('notifyd_listen_queue_drops_total',
                                         queue) >= 1)
        for c in extra:  # silent: a sync worker would wait on them
            c.close()
        served(burst + waiting)
        self.assertNotIn('notifyd_listen_queue_drops_total%s' % unix_queue,
                         get(url + 'metrics')[1])

        # A HUP that changes bind: notifyd watches the new addresses.
        other = os.path.join(self.dir, 'other.sock')
        self.config(bind=['unix:' + other], backlog=2, timeout=30)
        mark = len(self.log())
        master.send_signal(signal.SIGHUP)
        _, url = self.notifyd_started(after=mark)
        self.assertEqual(metric('notifyd_listen_queue_listening',
                                '{addr="unix:%s"}' % other), 1)
        self.assertNotIn(queue, get(url + 'metrics')[1])

    def test_master_sigkill_takes_notifyd_along(self):
        master = self.gunicorn()
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        self.strays = self.workers(master.pid)
        master.send_signal(signal.SIGKILL)
        master.wait(DEADLINE)
        wait_for('notifyd to exit', lambda: not alive(pid))
        wait_for('the health port to be free',
                 lambda: port_refused(url[len('http://'):-1]))

    def test_two_masters_in_one_directory_get_a_clear_error(self):
        # healthcheck_directory '' is the working directory: two masters
        # started in one directory would share it.
        self.gunicorn(healthcheck_directory='')
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        log_path = os.path.join(self.dir, 'second.log')
        with open(log_path, 'w') as log:
            env = dict(os.environ, PATH='/usr/bin:/bin')
            env.pop('VIRTUAL_ENV', None)
            second = subprocess.Popen(
                [self.python, '-m', 'gunicorn', '--config',
                 os.path.join(self.dir, 'gunicorn.conf.py'),
                 '--chdir', os.path.join(self.src, 'examples', 'gunicorn'),
                 'hello:app'],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                start_new_session=True)
        self.addCleanup(self.kill_all, second)

        def second_log():
            with open(log_path) as f:
                return f.read()
        wait_for('the second master to give up on notifyd',
                 lambda: 'refused its arguments' in second_log())
        self.assertIn('is locked by notifyd pid %d' % pid, second_log())
        self.assertIn('its own healthcheck_directory', second_log())
        self.assertEqual(self.notifyd_children(second.pid), [])
        self.wait_health(url, 200, '2 workers ready\n')

    def test_usr2_keeps_one_endpoint_answering(self):
        master = self.gunicorn()
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        # A connection the old notifyd has accepted, whose request comes
        # only after the new notifyd has started: the old one answers it.
        # Connections are accepted in the order they were made, so once a
        # later probe is answered, the old notifyd has accepted this one.
        host, port = url[len('http://'):-1].rsplit(':', 1)
        early = socket.create_connection((host, int(port)), timeout=DEADLINE)
        self.addCleanup(early.close)
        self.assertEqual(get(url), (200, '2 workers ready\n'))
        prober = Prober(url)
        mark = len(self.log())
        master.send_signal(signal.SIGUSR2)
        new_pid, new_url = self.notifyd_started(after=mark)
        self.assertEqual(new_url, url)
        self.assertIn('taking over from notifyd (pid %d)' % pid, self.log())
        early.sendall(b'GET / HTTP/1.1\r\nHost: health\r\n\r\n')
        answer = http.client.HTTPResponse(early)
        answer.begin()  # raises RemoteDisconnected on a cut connection
        self.assertEqual((answer.status, answer.read().decode()),
                         (200, '2 workers ready\n'))
        self.assertTrue(answer.will_close)
        new_master = next(p for p in children(master.pid)
                          if new_pid in children(p))
        self.strays = [new_master]
        wait_for('old notifyd to exit', lambda: not alive(pid))
        wait_for('new workers', lambda: len(self.workers(new_master)) == 2)
        # The old master goes; the new one is promoted and keeps counting.
        master.send_signal(signal.SIGTERM)
        master.wait(DEADLINE)
        self.wait_health(url, 200, '2 workers ready\n')
        self.state_files(self.workers(new_master))
        prober.stop()
        self.assertEqual(prober.failures, [])
        self.assertEqual(self.notifyd_children(new_master), [new_pid])
        os.kill(new_master, signal.SIGTERM)
        wait_for('notifyd to exit', lambda: not alive(new_pid))
        wait_for('the health port to be free',
                 lambda: port_refused(url[len('http://'):-1]))

    def test_healthcheck_bind_none_starts_nothing(self):
        master = self.gunicorn(healthcheck_bind=None)
        wait_for('the line saying so', lambda: 'notifyd: healthcheck_bind is '
                 'None: notifyd is not started' in self.log())
        self.assertEqual(get('http://%s/' % self.app.group(1)),
                         (200, 'hello\n'))
        wait_for('workers', lambda: len(self.workers(master.pid)) == 2)
        self.assertEqual(self.notifyd_children(master.pid), [])
        self.assertEqual(os.listdir(self.state), [])

    def test_bad_settings_get_a_line_each_and_gunicorn_serves(self):
        taken = socket.socket()
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        cases = [
            ('require', {'healthcheck_require_workers': 'x'},
             ['healthcheck_require_workers "x": must be a whole number, 0 or '
              'more; notifyd is not started']),
            ('filename', {'healthcheck_filename': 'worker'},
             ['healthcheck_filename "worker": must contain exactly one {} '
              'placeholder for the pid']),
            ('every bad setting', {'healthcheck_filename': '{}.tmp',
                                   'healthcheck_reload_grace': 3600,
                                   'notifyd_args': ['--log-level', 'loud']},
             ['healthcheck_filename "{}.tmp": must not end in .tmp',
              'notifyd_args: --log-level "loud": must be debug, info, warn '
              'or error; notifyd is not started',
              'healthcheck_reload_grace "3600s": must be a duration']),
            ('port taken', {'healthcheck_bind': '127.0.0.1:%d' % port},
             ["healthcheck_bind '127.0.0.1:%d': Address already in use; "
              "notifyd is not started" % port]),
            ('missing binary', {},
             ['no notifyd binary in %s' % os.path.dirname(self.notifyd)]),
        ]
        for name, settings, wants in cases:
            with self.subTest(name):
                self.setUp()
                moved = self.notifyd + '.moved'
                if name == 'missing binary':
                    os.rename(self.notifyd, moved)
                try:
                    master = self.gunicorn(**settings)
                    wait_for('workers', lambda: len(self.workers(master.pid)) == 2)
                    self.assertEqual(get('http://%s/' % self.app.group(1)),
                                     (200, 'hello\n'))
                finally:
                    if name == 'missing binary':
                        os.rename(moved, self.notifyd)
                errors = self.error_lines()
                self.assertEqual(len(errors), len(wants), errors)
                for want, error in zip(wants, errors):
                    self.assertIn(want, error)
                self.assertEqual(self.notifyd_children(master.pid), [])
                self.kill_all(master)

    # Reload, boot and the supervisor, with an application of the test's own.

    def slow_app(self, seconds):
        """Write slowapp.py, whose import takes seconds, and forever while
        the file named by self.hang exists; return its gunicorn name."""
        self.hang = os.path.join(self.dir, 'hang')
        with open(os.path.join(self.dir, 'slowapp.py'), 'w') as f:
            f.write('import os, time\n'
                    'time.sleep(%r)\n'
                    'while os.path.exists(%r):\n'
                    '    time.sleep(0.05)\n'
                    'def app(environ, start_response):\n'
                    '    start_response("200 OK", [])\n'
                    '    return [b"slow\\n"]\n' % (seconds, self.hang))
        return 'slowapp:app'

    def reload(self, master, url):
        """HUP master and wait until its new workers are ready; return
        them."""
        before = set(self.workers(master.pid))
        master.send_signal(signal.SIGHUP)

        def reloaded():
            now = set(self.workers(master.pid))
            return len(now) == 2 and not now & before and now
        new = wait_for('the new workers', reloaded)
        self.wait_health(url, 200, '2 workers ready\n')
        return new

    def test_hup_keeps_every_probe_at_200(self):
        # gunicorn stops the old workers as it starts the new ones, which
        # take 0.5 s to import: the answer keeps the old count meanwhile.
        master = self.gunicorn(_app=self.slow_app(0.5))
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        prober = Prober(url, interval=0.005)
        for _ in range(3):
            self.reload(master, url)
        prober.stop()
        self.assertEqual(prober.failures, [])
        bad = [a for a in prober.answers if a[0] != 200]
        sys.stderr.write('\n%d of %d probes through 3 HUPs were not 200\n'
                         % (len(bad), len(prober.answers)))
        self.assertEqual(bad, [])
        self.assertIn((200, '2 workers ready, reloading\n'), prober.answers)
        self.assertEqual(self.notifyd_children(master.pid), [pid])

    def test_reload_grace_ends_with_the_truth(self):
        master = self.gunicorn(_app=self.slow_app(0),
                               healthcheck_reload_grace=2)
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        open(self.hang, 'w').close()  # the new workers never finish importing
        master.send_signal(signal.SIGHUP)
        # The grace notifyd applies is the setting's, by its own clock.
        reload = wait_for('the reload in /status', lambda: json.loads(
            get(url + 'status')[1])['reload'])
        grace = (datetime.datetime.fromisoformat(reload['grace_ends'])
                 - datetime.datetime.fromisoformat(reload['since']))
        self.assertEqual(grace, datetime.timedelta(seconds=2), reload)
        answers = []

        def truth():
            answers.append(get(url))
            return answers[-1][0] == 500
        wait_for('the grace to end', truth)
        self.assertEqual(answers[-1], (500, '0 workers ready\n'), answers)
        self.assertIn((200, '2 workers ready, reloading\n'), answers)
        os.remove(self.hang)
        self.wait_health(url, 200, '2 workers ready\n')

    def test_supervisor_hears_ready_reloading_and_stopping(self):
        path = os.path.join(self.dir, 'sd.sock')
        supervisor = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(supervisor.close)
        supervisor.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        supervisor.bind(path)
        supervisor.settimeout(DEADLINE)
        heard = []

        def hear(what, probe=True):
            """Receive datagrams until one holds what; return it and the
            health answer right after it."""
            while True:
                data, anc, _, _ = supervisor.recvmsg(
                    4096, socket.CMSG_SPACE(12))
                sender = struct.unpack('3i', anc[0][2][:12])[0]
                heard.append((data.decode(), sender))
                if what in data.decode().split('\n'):
                    return data.decode(), sender, probe and get(url)

        master = self.gunicorn(_env={'NOTIFY_SOCKET': path})
        pid, url = self.notifyd_started()
        data, sender, answer = hear('READY=1')
        # From notifyd, once the workers are ready; gunicorn's own READY=1
        # (before any worker) never went.
        self.assertEqual(sender, pid)
        self.assertEqual(answer, (200, '2 workers ready\n'), heard)
        self.assertEqual([h for h in heard if 'arbiter' in h[0]
                          or h[1] == master.pid], [])
        self.assertIn('STATUS=2/2 workers ready', data)

        master.send_signal(signal.SIGHUP)
        data, sender, _ = hear('RELOADING=1')
        self.assertEqual(sender, pid)
        self.assertRegex(data, r'(^|\n)MONOTONIC_USEC=\d+(\n|$)')
        data, sender, answer = hear('READY=1')
        self.assertEqual(answer, (200, '2 workers ready\n'))

        master.send_signal(signal.SIGTERM)
        hear('STOPPING=1', probe=False)
        master.wait(DEADLINE)

    def test_preload_app_answers_every_probe_at_once(self):
        for daemon in (False, True):
            with self.subTest(daemon=daemon):
                self.setUp()
                self.preload_app(daemon)

    def preload_app(self, daemon):
        settings = {'preload_app': True}
        if daemon:
            # The daemon's output goes to the log file; its pid to a file.
            pidfile = os.path.join(self.dir, 'gunicorn.pid')
            settings.update(daemon=True, pidfile=pidfile,
                            errorlog=os.path.join(self.dir, 'gunicorn.log'))
        app = self.slow_app(0)
        open(self.hang, 'w').close()
        master = self.gunicorn(_app=app, _wait=False, **settings)
        pid, url = self.notifyd_started()
        if daemon:
            # Not the pid file, written only once the application loaded.
            with open('/proc/%d/stat' % pid) as f:
                self.strays = [int(f.read().rpartition(')')[2].split()[1])]
        # The application imports until the test lets it go: every probe
        # meanwhile is answered within 100 ms, the bound the answer must
        # keep.
        answers, failures = [], []
        started = time.monotonic()
        while time.monotonic() < started + 3:
            try:
                answers.append(get(url, timeout=0.1))
            except OSError as err:
                failures.append(repr(err))
            time.sleep(0.01)
        os.remove(self.hang)
        self.assertEqual(failures, [])
        self.assertEqual(set(answers), {(500, '0 workers ready, starting\n')})
        self.wait_health(url, 200, '2 workers ready\n')
        self.kill_all(master)

    def test_capacity_follows_workers_ttin_and_ttou(self):
        master = self.gunicorn(workers=4)
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '4 workers ready\n')
        status = lambda: json.loads(get(url + 'status')[1])
        self.assertEqual(status()['expected'], 4)
        master.send_signal(signal.SIGTTIN)
        wait_for('expected 5', lambda: status()['expected'] == 5)
        self.wait_health(url, 200, '5 workers ready\n')
        self.assertFalse(status()['reloading'])
        master.send_signal(signal.SIGTTOU)
        wait_for('expected 4', lambda: status()['expected'] == 4)
        self.assertFalse(status()['reloading'])
        self.assertIn('[+]capacity ok: ', get(url + '?verbose')[1])


if __name__ == '__main__':
    unittest.main()
