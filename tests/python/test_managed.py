"""Tests for managed mode's settings, binary lookup and hook chaining.

Run from the repository root:

    python3 -m unittest discover -s tests/python

The processes managed mode runs are tested end to end, with the wheel and
real gunicorn, in tests/wheel.
"""

import os
import socket
import stat
import sys
import tempfile
import unittest
from unittest import mock

import notifyd_gunicorn
from notifyd_gunicorn import _managed


class SettingsTest(unittest.TestCase):

    def read(self, **ns):
        ns.setdefault('healthcheck_bind', '127.0.0.1:8001')
        return _managed._read_settings(ns)

    def test_seed_defaults(self):
        settings, error = self.read()
        self.assertIsNone(error)
        self.assertEqual(settings.flags(), [
            '--bind', '127.0.0.1:8001', '--require', '1',
            '--dir', os.getcwd(), '--filename', '.gunicorn.worker.{}'])
        self.assertEqual(settings.args, ())

    def test_bind_none_or_absent_starts_nothing(self):
        self.assertEqual(_managed._read_settings({}), (None, None))
        self.assertEqual(self.read(healthcheck_bind=None), (None, None))

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
                settings, error = self.read(**ns)
                self.assertIsNone(error)
                self.assertIsNotNone(settings)

    def test_bad_values_get_one_line(self):
        for ns, want in [
            ({'healthcheck_bind': 8001}, 'healthcheck_bind 8001: must be "host:port"'),
            ({'healthcheck_bind': 'localhost'}, "healthcheck_bind 'localhost': must be"),
            ({'healthcheck_bind': '::1:8001'}, "healthcheck_bind '::1:8001': must be"),
            ({'healthcheck_bind': '127.0.0.1:70000'}, "healthcheck_bind '127.0.0.1:70000'"),
            ({'healthcheck_require_workers': 'x'}, "healthcheck_require_workers 'x': must be a whole number, 0 or more"),
            ({'healthcheck_require_workers': -1}, 'healthcheck_require_workers -1: must be'),
            ({'healthcheck_require_workers': 1.5}, 'healthcheck_require_workers 1.5: must be'),
            ({'healthcheck_require_workers': True}, 'healthcheck_require_workers True: must be'),
            ({'healthcheck_directory': 3}, 'healthcheck_directory 3: must be'),
            ({'healthcheck_filename': 'worker'}, "healthcheck_filename 'worker': must contain exactly one {}"),
            ({'healthcheck_filename': '{}.{}'}, "healthcheck_filename '{}.{}': must contain"),
            ({'healthcheck_filename': 'a/{}'}, "healthcheck_filename 'a/{}': must be a file name without"),
            ({'healthcheck_filename': '{}.tmp'}, "healthcheck_filename '{}.tmp': must not end in .tmp"),
            ({'healthcheck_filename': 'w{}}'}, "healthcheck_filename 'w{}}': must not contain braces"),
            ({'notifyd_args': '--log-level debug'}, "notifyd_args '--log-level debug': must be a list of strings"),
            ({'notifyd_args': ['--require', 2]}, 'notifyd_args'),
            ({'notifyd_binary': 7}, 'notifyd_binary 7: must be a path'),
        ]:
            with self.subTest(ns):
                settings, error = self.read(**ns)
                self.assertIsNone(settings)
                self.assertIn(want, error)
                self.assertNotIn('\n', error)


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
            settings, _ = _managed._read_settings(
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
                self.assertEqual(_managed.find_binary(),
                                 os.path.join(bin_dir, 'notifyd'))

    def test_missing_binary_names_where_it_looked(self):
        with tempfile.TemporaryDirectory() as bin_dir, \
                mock.patch.object(sys, 'executable',
                                  os.path.join(bin_dir, 'python')), \
                mock.patch('sysconfig.get_path', return_value=bin_dir):
            with self.assertRaises(LookupError) as cm:
                _managed.find_binary()
        self.assertIn('no notifyd binary in %s:' % bin_dir, str(cm.exception))

    def test_configured_binary_must_be_executable(self):
        with tempfile.NamedTemporaryFile() as f:
            with self.assertRaises(LookupError) as cm:
                _managed.find_binary(f.name)
        self.assertIn('notifyd_binary %r: no executable file there' % f.name,
                      str(cm.exception))


class StartTest(unittest.TestCase):
    """start() at config time, with a manager of the test's own."""

    def setUp(self):
        patcher = mock.patch.object(_managed, '_manager', _managed._Manager())
        self.manager = patcher.start()
        self.addCleanup(patcher.stop)
        self.addCleanup(self.close)
        self.binary = tempfile.NamedTemporaryFile(suffix='-notifyd')
        os.chmod(self.binary.name, stat.S_IRWXU)
        self.addCleanup(self.binary.close)

    def close(self):
        if self.manager.http is not None:
            self.manager.http.close()

    def test_good_settings_hold_the_port_and_install_the_worker_hooks(self):
        ns = {'healthcheck_bind': '127.0.0.1:0',
              'notifyd_binary': self.binary.name}
        notifyd_gunicorn.start(ns)
        self.assertEqual(self.manager.messages, [])
        self.assertEqual(self.manager.http.getsockname()[0], '127.0.0.1')
        self.assertEqual(ns['notifyd_socket'], self.manager.path)
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
              'notifyd_binary': self.binary.name}
        notifyd_gunicorn.start(ns)
        self.assertEqual(self.manager.messages, [(
            'error', "notifyd: healthcheck_bind '127.0.0.1:%d': Address "
            "already in use; notifyd is not started" % port)])
        self.assertNotIn('post_worker_init', ns)
        self.assertNotIn('notifyd_socket', ns)

    def test_the_supervisors_socket_is_taken_only_for_notifyd(self):
        with mock.patch.dict(os.environ, {'NOTIFY_SOCKET': '@sd'}):
            notifyd_gunicorn.start({'healthcheck_bind': None})
            self.assertEqual(os.environ.get('NOTIFY_SOCKET'), '@sd')
            self.assertIsNone(self.manager.supervisor)
            notifyd_gunicorn.start({'healthcheck_bind': '127.0.0.1:0',
                                    'notifyd_binary': self.binary.name})
            self.assertNotIn('NOTIFY_SOCKET', os.environ)
            self.assertEqual(self.manager.supervisor, '@sd')

    def test_reload_grace_setting(self):
        settings, error = _managed._read_settings({
            'healthcheck_bind': '127.0.0.1:0',
            'healthcheck_reload_grace': 2.5})
        self.assertIsNone(error)
        self.assertEqual(settings.flags()[-2:], ['--reload-grace', '2500ms'])
        for bad in ('10', -1, 601, True):
            settings, error = _managed._read_settings({
                'healthcheck_bind': '127.0.0.1:0',
                'healthcheck_reload_grace': bad})
            self.assertIsNone(settings)
            self.assertEqual(error, 'healthcheck_reload_grace %r: must be a '
                             'number of seconds from 0 to 600' % (bad,))

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


if __name__ == '__main__':
    unittest.main()
