"""Tests for managed mode's settings, binary lookup and hook chaining.

Run from the repository root:

    python3 -m unittest discover -s tests/python

The processes managed mode runs are tested end to end, with the wheel and
real gunicorn, in tests/wheel.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import notifyd_gunicorn
from notifyd_gunicorn import _handoff, _managed, _process, _settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
NOTIFYD = None  # built by setUpModule: settings are checked by notifyd


def setUpModule():
    global NOTIFYD
    out = tempfile.mkdtemp()
    NOTIFYD = os.path.join(out, 'notifyd')
    subprocess.run(['go', 'build', '-o', NOTIFYD, './cmd/notifyd'],
                   cwd=ROOT, check=True)


def read_settings(ns):
    ns.setdefault('notifyd_binary', NOTIFYD)
    return _settings.read(ns)


class SettingsTest(unittest.TestCase):

    def read(self, **ns):
        ns.setdefault('healthcheck_bind', '127.0.0.1:8001')
        return read_settings(ns)

    def test_seed_defaults(self):
        settings, problems = self.read()
        self.assertEqual(problems, [])
        self.assertEqual(settings.flags(), [
            '--bind', '127.0.0.1:8001', '--require', '1',
            '--dir', os.getcwd(), '--filename', '.gunicorn.worker.{}'])
        self.assertEqual(settings.args, ())

    def test_bind_none_or_absent_starts_nothing(self):
        self.assertEqual(read_settings({}), (None, []))
        self.assertEqual(self.read(healthcheck_bind=None), (None, []))

    def test_accepted_values(self):
        for ns in [
            {'healthcheck_bind': '[::1]:0'},
            {'healthcheck_bind': ':8001'},
            {'healthcheck_require_workers': '3'},
            {'healthcheck_require_workers': 0},
            {'healthcheck_directory': '/run/app'},
            {'healthcheck_filename': 'w.{}.state'},
            {'notifyd_args': ['--log-level', 'debug']},
        ]:
            with self.subTest(ns):
                settings, problems = self.read(**ns)
                self.assertEqual(problems, [])
                self.assertIsNotNone(settings)

    def test_bad_values_get_one_line_naming_the_setting(self):
        # The rules are notifyd's (notifyd --check); the lines name the
        # settings.
        for ns, want in [
            ({'healthcheck_bind': 8001}, 'healthcheck_bind "8001": must be host:port'),
            ({'healthcheck_bind': 'localhost'}, 'healthcheck_bind "localhost": must be'),
            ({'healthcheck_bind': '::1:8001'}, 'healthcheck_bind "::1:8001": must be'),
            ({'healthcheck_bind': '127.0.0.1:70000'}, 'healthcheck_bind "127.0.0.1:70000": must be'),
            ({'healthcheck_require_workers': 'x'}, 'healthcheck_require_workers "x": must be a whole number, 0 or more'),
            ({'healthcheck_require_workers': -1}, 'healthcheck_require_workers "-1": must be'),
            ({'healthcheck_require_workers': 1.5}, 'healthcheck_require_workers "1.5": must be'),
            ({'healthcheck_require_workers': True}, 'healthcheck_require_workers "True": must be'),
            ({'healthcheck_directory': 3}, 'healthcheck_directory 3: must be'),
            ({'healthcheck_filename': 'worker'}, 'healthcheck_filename "worker": must contain exactly one {}'),
            ({'healthcheck_filename': '{}.{}'}, 'healthcheck_filename "{}.{}": must contain'),
            ({'healthcheck_filename': 'a/{}'}, 'healthcheck_filename "a/{}": must be a file name without \'/\'; put the directory in healthcheck_directory'),
            ({'healthcheck_filename': '{}.tmp'}, 'healthcheck_filename "{}.tmp": must not end in .tmp'),
            ({'healthcheck_reload_grace': 601}, 'healthcheck_reload_grace "601s": must be a duration from 0s to 10m0s'),
            ({'healthcheck_reload_grace': '10'}, "healthcheck_reload_grace '10': must be a number of seconds"),
            ({'notifyd_args': '--log-level debug'}, "notifyd_args '--log-level debug': must be a list of strings"),
            ({'notifyd_args': ['--require', 2]}, 'notifyd_args'),
            ({'notifyd_args': ['--log-level', 'loud']}, 'notifyd_args: --log-level "loud": must be debug, info, warn or error'),
            ({'notifyd_args': ['--requre', '2']}, 'notifyd_args: flag provided but not defined: -requre'),
            ({'notifyd_args': ['--log-level', '--bind']}, 'notifyd_args: --log-level "--bind": must be'),
            ({'notifyd_binary': 7}, 'notifyd_binary 7: must be a path'),
            ({'healthcheck_filename': 'w{}\0'}, 'healthcheck_filename: must not contain a NUL byte'),
            ({'notifyd_args': ['--log-level', 'de\0bug']}, 'notifyd_args: must not contain a NUL byte'),
        ]:
            with self.subTest(ns):
                settings, problems = self.read(**ns)
                self.assertIsNone(settings)
                self.assertEqual(len(problems), 1, problems)
                self.assertTrue(problems[0].startswith(want), problems)
                self.assertNotIn('\n', problems[0])

    def test_every_bad_setting_is_reported_at_once(self):
        settings, problems = self.read(
            healthcheck_bind='nowhere', healthcheck_require_workers='x',
            healthcheck_directory=3, healthcheck_filename='w',
            notifyd_args=['--log-level', 'loud'])
        self.assertIsNone(settings)
        self.assertEqual([p.split(':')[0].split(' ')[0] for p in problems], [
            'healthcheck_directory', 'healthcheck_bind',
            'healthcheck_require_workers', 'healthcheck_filename',
            'notifyd_args'], problems)

    def test_a_binary_that_cannot_check_is_one_line(self):
        with tempfile.TemporaryDirectory() as d:
            binary = os.path.join(d, 'notifyd')
            with open(binary, 'w') as f:
                f.write('#!/bin/sh\necho "no such flag" >&2\nexit 1\n')
            os.chmod(binary, stat.S_IRWXU)
            settings, problems = self.read(notifyd_binary=binary)
        self.assertIsNone(settings)
        self.assertEqual(problems, [
            'notifyd_binary %r: %s --check exited with status 1: no such flag'
            % (binary, binary)])


class ManagedFlagsTest(unittest.TestCase):

    def test_flags_managed_mode_sets_are_refused_naming_the_setting(self):
        for args, want in [
            (['--exit-with', '1'], "--exit-with is managed mode's own: "
             "managed mode sets it to the master's pid"),
            (['--bind=127.0.0.1:9'], "--bind is managed mode's own: set "
             "healthcheck_bind instead"),
            (['-socket', '/tmp/s'], "--socket is managed mode's own"),
            (['--dir', '/tmp'], 'set healthcheck_directory instead'),
            (['--log-level', 'debug', '--filename=w{}'],
             'set healthcheck_filename instead'),
            (['--require', '2'], 'set healthcheck_require_workers instead'),
            (['--version', '--dir', '/tmp'], 'set healthcheck_directory instead'),
        ]:
            with self.subTest(args):
                settings, problems = read_settings(
                    {'healthcheck_bind': '127.0.0.1:0', 'notifyd_args': args})
                self.assertIsNone(settings)
                self.assertEqual(len(problems), 1, problems)
                self.assertTrue(problems[0].startswith(
                    'notifyd_args %r: --' % (args,)), problems)
                self.assertIn(want, problems[0])

    def test_other_flags_pass_through(self):
        for args in (['--log-level', 'debug'], ['--expect', '4'],
                     ['--agent-bind', '127.0.0.1:0', '--socket-mode', '0600'],
                     ['--reload-grace=3s']):
            with self.subTest(args):
                settings, problems = read_settings(
                    {'healthcheck_bind': '127.0.0.1:0', 'notifyd_args': args})
                self.assertEqual(problems, [])
                self.assertEqual(settings.args, tuple(args))


class OldNotifydTest(unittest.TestCase):
    """The pid a hand-over names is believed only for a live notifyd that
    is the old master's child, on the socket handed over."""

    def start(self, *argv):
        proc = subprocess.Popen(argv)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc

    def test_a_child_on_the_socket_is_taken(self):
        proc = self.start(sys.executable, '-c', 'import time; time.sleep(100)',
                          '--socket', '/s/notify.sock')
        deadline = time.monotonic() + 10
        while True:
            try:
                old = _handoff.OldNotifyd(proc.pid, os.getpid(),
                                          '/s/notify.sock')
                break
            except ValueError:
                # Not exec'd yet: the fork still runs this interpreter.
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
        old.close()

    def test_anything_else_is_refused(self):
        proc = self.start(sys.executable, '-c', 'import time; time.sleep(100)',
                          '--socket', '/s/notify.sock')
        for pid, master, path, want in [
            (proc.pid, os.getppid(), '/s/notify.sock', 'not a child of'),
            (proc.pid, os.getpid(), '/other/notify.sock', 'not a notifyd on'),
            (os.getpid(), os.getppid(), '/s/notify.sock', 'not a notifyd on'),
        ]:
            with self.subTest(pid=pid, master=master, path=path):
                with self.assertRaises(ValueError) as cm:
                    _handoff.OldNotifyd(pid, master, path)
                self.assertIn(want, str(cm.exception))
        proc.kill()
        proc.wait()
        with self.assertRaises(ProcessLookupError):
            _handoff.OldNotifyd(proc.pid, os.getpid(), '/s/notify.sock')


class ListenQueuesTest(unittest.TestCase):

    def test_every_listener_as_notifyd_spells_it(self):
        class Server:
            LISTENERS = []
        with tempfile.TemporaryDirectory() as d:
            tcp = socket.socket()
            tcp.bind(('127.0.0.1', 0))
            path = os.path.join(d, 'app.sock')
            unix = socket.socket(socket.AF_UNIX)
            unix.bind(path)
            abstract = socket.socket(socket.AF_UNIX)
            abstract.bind('\0notifyd-test-%d' % os.getpid())
            socks = [tcp, unix, abstract, tcp]
            try:
                tcp6 = socket.socket(socket.AF_INET6)
                tcp6.bind(('::1', 0))
                socks.append(tcp6)
            except OSError:
                tcp6 = None
            for sock in socks:
                self.addCleanup(sock.close)
            Server.LISTENERS = socks
            want = ('127.0.0.1:%d' % tcp.getsockname()[1], 'unix:' + path)
            if tcp6 is not None:
                want += ('[::1]:%d' % tcp6.getsockname()[1],)
            self.assertEqual(_managed._listen_queues(Server()), want)
            settings, _ = read_settings(
                {'healthcheck_bind': '127.0.0.1:8001'})
            settings.queues = want[:2]
            self.assertEqual(settings.flags()[-4:], [
                '--listen-queue', want[0], '--listen-queue', want[1]])


class FindBinaryTest(unittest.TestCase):

    def test_next_to_the_interpreter_not_on_path(self):
        with tempfile.TemporaryDirectory() as bin_dir, \
                tempfile.TemporaryDirectory() as on_path:
            for place in (bin_dir, on_path):
                path = os.path.join(place, 'notifyd')
                with open(path, 'w') as f:
                    f.write('#!/bin/sh\n')
                os.chmod(path, stat.S_IRWXU)
            with mock.patch.object(sys, 'executable',
                                   os.path.join(bin_dir, 'python')), \
                    mock.patch.dict(os.environ, {'PATH': on_path}):
                self.assertEqual(_process.find_binary(),
                                 os.path.join(bin_dir, 'notifyd'))

    def test_missing_binary_names_where_it_looked(self):
        with tempfile.TemporaryDirectory() as bin_dir, \
                mock.patch.object(sys, 'executable',
                                  os.path.join(bin_dir, 'python')), \
                mock.patch('sysconfig.get_path', return_value=bin_dir):
            with self.assertRaises(LookupError) as cm:
                _process.find_binary()
        self.assertIn('no notifyd binary in %s:' % bin_dir, str(cm.exception))

    def test_configured_binary_must_be_executable(self):
        with tempfile.NamedTemporaryFile() as f:
            with self.assertRaises(LookupError) as cm:
                _process.find_binary(f.name)
        self.assertIn('notifyd_binary %r: no executable file there' % f.name,
                      str(cm.exception))


class StartTest(unittest.TestCase):
    """start() at config time, with a manager of the test's own."""

    def setUp(self):
        patcher = mock.patch.object(_managed, '_manager', _managed._Manager())
        self.manager = patcher.start()
        self.addCleanup(patcher.stop)
        self.addCleanup(self.close)

    def close(self):
        if self.manager.sockets is not None:
            self.manager.sockets.close(remove=False)

    def test_good_settings_hold_the_port_and_install_the_worker_hooks(self):
        ns = {'healthcheck_bind': '127.0.0.1:0',
              'notifyd_binary': NOTIFYD}
        notifyd_gunicorn.start(ns)
        self.assertEqual(self.manager.messages, [])
        self.assertEqual(self.manager.sockets.http.getsockname()[0],
                         '127.0.0.1')
        self.assertEqual(ns['notifyd_socket'], self.manager.sockets.path)
        for name in ('post_worker_init', 'worker_exit', 'child_exit',
                     'when_ready', 'on_reload', 'pre_exec', 'post_fork',
                     'on_exit', 'nworkers_changed'):
            self.assertTrue(callable(ns.get(name)), name)

    def test_taken_port_is_one_line_and_installs_no_worker_hook(self):
        taken = socket.socket()
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        ns = {'healthcheck_bind': '127.0.0.1:%d' % port,
              'notifyd_binary': NOTIFYD}
        notifyd_gunicorn.start(ns)
        self.assertEqual(self.manager.messages, [(
            'error', "notifyd: healthcheck_bind '127.0.0.1:%d': Address "
            "already in use; notifyd is not started" % port)])
        self.assertIs(self.manager.state, _managed.State.IDLE)
        self.assertNotIn('post_worker_init', ns)
        self.assertNotIn('notifyd_socket', ns)

    def test_the_supervisors_socket_is_taken_only_for_notifyd(self):
        with mock.patch.dict(os.environ, {'NOTIFY_SOCKET': '@sd'}):
            notifyd_gunicorn.start({'healthcheck_bind': None})
            self.assertEqual(os.environ.get('NOTIFY_SOCKET'), '@sd')
            self.assertIsNone(self.manager.supervisor)
            notifyd_gunicorn.start({'healthcheck_bind': '127.0.0.1:0',
                                    'notifyd_binary': NOTIFYD})
            self.assertNotIn('NOTIFY_SOCKET', os.environ)
            self.assertEqual(self.manager.supervisor, '@sd')

    def test_reload_grace_setting(self):
        for seconds, flag in ((2.5, '2.5s'), (0, '0s'), (600, '600s'),
                              (0.0001, '0.0001s')):
            settings, problems = read_settings({
                'healthcheck_bind': '127.0.0.1:0',
                'healthcheck_reload_grace': seconds})
            self.assertEqual(problems, [])
            self.assertEqual(settings.flags()[-2:], ['--reload-grace', flag])
        for bad, want in (
                ('10', "'10': must be a number of seconds"),
                (True, 'True: must be a number of seconds'),
                (-1, '"-1s": must be a duration from 0s to 10m0s'),
                (601, '"601s": must be a duration from 0s to 10m0s')):
            settings, problems = read_settings({
                'healthcheck_bind': '127.0.0.1:0',
                'healthcheck_reload_grace': bad})
            self.assertIsNone(settings)
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith(
                'healthcheck_reload_grace ' + want), problems)

    def test_hooks_chain_after_the_files_own_once(self):
        calls = []

        def when_ready(server):
            calls.append('own')

        ns = {'healthcheck_bind': None, 'when_ready': when_ready}
        notifyd_gunicorn.start(ns)
        notifyd_gunicorn.start(ns)
        server = mock.Mock()
        ns['when_ready'](server)
        self.assertEqual(calls, ['own'])
        server.log.info.assert_called_once_with(
            'notifyd: healthcheck_bind is None: notifyd is not started')


class _Log:
    """gunicorn's logger, as the hooks use it: lines, by level."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg, *args: self.lines.append((level, msg % args))


class StateTest(unittest.TestCase):
    """The manager's State through the hooks, with a real process in the
    place of notifyd and a master of the test's own: the test process."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ['rm', '-rf', self.dir])
        patcher = mock.patch.object(_managed, '_manager', _managed._Manager())
        self.manager = patcher.start()
        self.addCleanup(patcher.stop)
        handler = signal.getsignal(signal.SIGCHLD)
        self.addCleanup(signal.signal, signal.SIGCHLD, handler)
        self.server = mock.Mock(
            log=_Log(), num_workers=1, LISTENERS=[], reexec_pid=0,
            master_pid=os.getpid())
        self.server.cfg = mock.Mock(uid=os.getuid(), gid=os.getgid(),
                                    preload_app=False, env_orig={})
        self.server.log.error_log = None
        os.environ.pop('RUNTIME_DIRECTORY', None)

    def fake_notifyd(self, script):
        path = os.path.join(self.dir, 'notifyd')
        with open(path, 'w') as f:
            f.write('#!/bin/sh\n[ "$1" = --check ] && exit 0\n' + script)
        os.chmod(path, stat.S_IRWXU)
        return path

    def start(self, binary):
        with mock.patch.dict(os.environ, {'RUNTIME_DIRECTORY': self.dir}):
            notifyd_gunicorn.start({'healthcheck_bind': '127.0.0.1:0',
                                    'healthcheck_directory': self.dir,
                                    'notifyd_binary': binary})
        self.addCleanup(self.manager.on_exit, self.server)

    def wait_state(self, state):
        deadline = time.monotonic() + 10
        while self.manager.state is not state:
            self.assertLess(time.monotonic(), deadline,
                            'still %s, want %s: %s' % (
                                self.manager.state, state,
                                self.server.log.lines))
            time.sleep(0.01)  # the SIGCHLD handler runs between two polls

    def test_given_up_until_the_next_reload(self):
        # It refuses its arguments the first time, and runs the next.
        mark = os.path.join(self.dir, 'refused')
        binary = self.fake_notifyd(
            '[ -e %s ] && exec sleep 100\ntouch %s\nexit 2\n' % (mark, mark))
        self.start(binary)
        self.assertIs(self.manager.state, _managed.State.IDLE)
        self.manager.sync(self.server)  # when_ready
        self.wait_state(_managed.State.GIVEN_UP)
        started = [line for level, line in self.server.log.lines
                   if 'notifyd: started' in line]
        self.assertEqual(len(started), 1)
        self.manager.sync(self.server)  # when_ready again: no retry
        self.assertIs(self.manager.state, _managed.State.GIVEN_UP)
        self.assertEqual(len([line for level, line in self.server.log.lines
                              if 'notifyd: started' in line]), 1)
        self.manager.reload(self.server)
        self.assertIs(self.manager.state, _managed.State.RUNNING)
        self.assertIsNotNone(self.manager.process)
        self.manager.on_exit(self.server)
        self.assertIs(self.manager.state, _managed.State.EXITED)
        self.assertIsNone(self.manager.process)

    def test_a_crash_starts_it_again(self):
        binary = self.fake_notifyd('exec sleep 100\n')
        self.start(binary)
        self.manager.sync(self.server)
        self.assertIs(self.manager.state, _managed.State.RUNNING)
        first = self.manager.process
        first.started -= _managed.QUICK_EXIT  # not an exit at start
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.manager.process is first or self.manager.process is None:
            self.assertLess(time.monotonic(), deadline, self.server.log.lines)
            time.sleep(0.01)
        self.assertIs(self.manager.state, _managed.State.RUNNING)
        self.assertIn(('warning', 'notifyd: notifyd (pid %d) was killed by '
                       'signal 9; starting it again' % first.pid),
                      self.server.log.lines)


if __name__ == '__main__':
    unittest.main()
