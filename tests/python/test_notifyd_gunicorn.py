"""Tests for notifyd_gunicorn, against real Unix datagram sockets.

Run from the repository root:

    python3 -m unittest discover -s tests/python
"""

import errno
import fcntl
import importlib.util
import logging
import mmap
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
import urllib.request
from unittest import mock

import notifyd_gunicorn
from notifyd import _page, _reporter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, 'examples', 'gunicorn')

# WORKER_PID is what the fake worker claims to be. It differs from our own
# pid, so the tests can tell PID= (the worker) from the credentials (us).
WORKER_PID = 4321

# GUARD bounds every wait for a datagram, so a broken hook fails a test
# instead of hanging it. No test depends on how long anything takes.
GUARD = 30.0

def datagrams_only(test):
    """Turn the activity page off for the rest of test, as where no memfd
    can be made: activity then travels in datagrams, which a test reads."""
    no_page = mock.patch.object(
        _page, 'Page', side_effect=OSError(errno.ENOSYS, 'memfd_create'))
    no_page.start()
    test.addCleanup(no_page.stop)


def eventually(test, what, cond):
    """Poll cond until it holds; fail test if it does not within GUARD."""
    deadline = time.monotonic() + GUARD
    while not cond():
        if time.monotonic() > deadline:
            test.fail('gave up waiting for %s' % what)
        time.sleep(0.01)


CREDENTIALS = struct.calcsize('3i')
OUR_CREDENTIALS = (os.getpid(), os.getuid(), os.getgid())


class Receiver:
    """A bound datagram socket with SO_PASSCRED: notifyd's side of the wire."""

    def __init__(self, address, passcred=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if passcred:
            self.pass_credentials()
        self.sock.bind(address)

    def pass_credentials(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def close(self):
        self.sock.close()

    def receive(self, timeout=GUARD):
        """Return (data, (pid, uid, gid)) of the next datagram.

        The credentials are None when the datagram carried none.
        """
        data, credentials, fds = self.receive_fds(timeout)
        for fd in fds:
            os.close(fd)
        return data, credentials

    def receive_fds(self, timeout=GUARD):
        """Return (data, credentials, descriptors) of the next datagram.

        The caller owns the descriptors.
        """
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(
            4096, socket.CMSG_SPACE(CREDENTIALS) + socket.CMSG_SPACE(16))
        credentials, fds = None, []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                credentials = struct.unpack('3i', payload[:CREDENTIALS])
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // 4
                fds.extend(struct.unpack('%di' % n, payload[:4 * n]))
        return data, credentials, fds

    def pending(self):
        """Return the data of every queued datagram, without waiting."""
        self.sock.setblocking(False)
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096))
            except BlockingIOError:
                return found


class FakeLog:
    """Records warnings the way gunicorn's logger is called."""

    def __init__(self):
        self.warnings = []
        self.infos = []

    def warning(self, msg, *args):
        self.warnings.append(msg % args)

    def info(self, msg, *args):
        self.infos.append(msg % args)


class FakeWorker:
    def __init__(self, pid=WORKER_PID, log=None):
        self.pid = pid
        self.log = log if log is not None else FakeLog()


class FakeServer:
    def __init__(self):
        self.log = FakeLog()


def call(ns, name, worker, server=None):
    """Call hook name from ns with the arguments gunicorn gives it."""
    if name == 'post_worker_init':
        return ns[name](worker)
    return ns[name](server or FakeServer(), worker)


EXIT_HOOKS = ('worker_exit', 'child_exit')
ALL_HOOKS = ('post_worker_init',) + EXIT_HOOKS
REQUEST_HOOKS = ('pre_request', 'post_request')
# READY=1 carries the worker's activity page. Without a page, it carries the
# activity itself: IDLE is that of a worker that has served nothing yet.
READY = b'READY=1\nPID=4321\nX_NOTIFYD_PAGE=1'
IDLE = b'X_NOTIFYD_IN_FLIGHT=0\nX_NOTIFYD_REQUESTS=0\nX_NOTIFYD_BUSY_USEC=0'
DATAGRAM_READY = b'READY=1\nPID=4321\n' + IDLE
MESSAGES = {
    'post_worker_init': READY,
    'worker_exit': b'STOPPING=1\nPID=4321',
    'child_exit': b'STOPPING=1\nPID=4321',
}

STRING_HOOK_CALLS = []


def string_hook(worker):
    STRING_HOOK_CALLS.append(worker.pid)


class SocketTestCase(unittest.TestCase):
    """Gives each test a short temporary directory and a clean environment."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='nd')
        self.addCleanup(shutil.rmtree, self.dir)
        env = mock.patch.dict(os.environ)
        env.start()
        self.addCleanup(env.stop)
        for name in ('NOTIFYD_SOCKET', 'NOTIFYD_REANNOUNCE',
                     'RUNTIME_DIRECTORY', 'NOTIFY_SOCKET'):
            os.environ.pop(name, None)
        self.addCleanup(os.chdir, os.getcwd())
        self.addCleanup(self.stop_announcer)

    @staticmethod
    def stop_announcer():
        # post_worker_init in this process starts a re-announcer, as in a
        # worker; none may outlive its test.
        if notifyd_gunicorn._announcer is not None:
            notifyd_gunicorn._announcer.stop()
            notifyd_gunicorn._announcer = None
        if _reporter._current is not None:
            _reporter._current.stop()
            _reporter._current = None

    def receiver(self, address, passcred=True):
        receiver = Receiver(address, passcred)
        self.addCleanup(receiver.close)
        return receiver


class HookTest(SocketTestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.dir, 'notify.sock')
        self.notifyd = self.receiver(self.path)
        self.ns = {'notifyd_socket': self.path}

    def test_hooks_send_message_with_our_credentials(self):
        notifyd_gunicorn.install(self.ns)
        for name in ALL_HOOKS:
            with self.subTest(hook=name):
                worker, server = FakeWorker(), FakeServer()
                self.assertIsNone(call(self.ns, name, worker, server))
                data, credentials = self.notifyd.receive()
                self.assertEqual(data, MESSAGES[name])
                self.assertEqual(credentials, OUR_CREDENTIALS)
                self.assertEqual(self.notifyd.pending(), [])
                self.assertEqual(worker.log.warnings, [])
                self.assertEqual(server.log.warnings, [])

    def test_credentials_survive_late_so_passcred(self):
        # As under socket activation: SO_PASSCRED is set only after the
        # datagram was queued, so the kernel attached no credentials of its
        # own and only the ones the hook attached can arrive.
        path = os.path.join(self.dir, 'activated.sock')
        notifyd = self.receiver(path, passcred=False)
        ns = {'notifyd_socket': path}
        notifyd_gunicorn.install(ns)
        call(ns, 'post_worker_init', FakeWorker())
        notifyd.pass_credentials()
        data, credentials = notifyd.receive()
        self.assertEqual(data, READY)
        self.assertEqual(credentials, OUR_CREDENTIALS)

    def test_install_adds_only_its_six_hooks(self):
        notifyd_gunicorn.install(self.ns)
        self.assertEqual(sorted(self.ns),
                         sorted(('notifyd_socket', 'on_reload') + ALL_HOOKS
                                + REQUEST_HOOKS))

    def test_on_reload_sends_reloading_and_waits_for_the_barrier(self):
        notifyd_gunicorn.install(self.ns)
        acknowledged = []

        def notifyd():
            # notifyd's side: read RELOADING=1, then close the barrier's
            # descriptor once it is applied.
            data, credentials = self.notifyd.receive()
            msg, ancillary, _, _ = self.notifyd.sock.recvmsg(
                4096, socket.CMSG_SPACE(CREDENTIALS)
                + socket.CMSG_SPACE(struct.calcsize('i')))
            fds = [fd for level, kind, payload in ancillary
                   if kind == socket.SCM_RIGHTS
                   for fd in struct.unpack('i', payload[:4])]
            acknowledged.append((data, credentials, msg, len(fds)))
            for fd in fds:
                os.close(fd)

        thread = threading.Thread(target=notifyd)
        thread.start()
        server = FakeServer()
        self.ns['on_reload'](server)
        thread.join()
        data, credentials, barrier, fds = acknowledged[0]
        self.assertRegex(data, rb'^RELOADING=1\nMONOTONIC_USEC=\d+$')
        self.assertEqual(credentials, OUR_CREDENTIALS)
        self.assertEqual((barrier, fds), (b'BARRIER=1', 1))
        self.assertEqual(server.log.warnings, [])

    def test_on_reload_without_acknowledgement_warns_and_returns(self):
        notifyd_gunicorn.install(self.ns)
        server = FakeServer()
        with mock.patch.object(notifyd_gunicorn, 'SEND_TIMEOUT', 0.2):
            self.ns['on_reload'](server)
        self.assertEqual(len(server.log.warnings), 1, server.log.warnings)
        self.assertIn('could not send RELOADING=1 for the master to %s: '
                      'no acknowledgement' % self.path,
                      server.log.warnings[0])

    def test_user_hook_runs_first_and_once(self):
        for name in ALL_HOOKS:
            with self.subTest(hook=name):
                calls = []

                def user_hook(*args):
                    # Nothing may have been sent yet when the user's hook runs.
                    calls.append(self.notifyd.pending())

                self.ns[name] = user_hook
                notifyd_gunicorn.install(self.ns)
                call(self.ns, name, FakeWorker())
                self.assertEqual(calls, [[]])
                self.assertEqual(self.notifyd.pending(), [MESSAGES[name]])

    def test_install_twice_wraps_once(self):
        calls = []
        self.ns['post_worker_init'] = lambda worker: calls.append(worker.pid)
        notifyd_gunicorn.install(self.ns)
        first = dict(self.ns)
        notifyd_gunicorn.install(self.ns)
        for name in ALL_HOOKS + REQUEST_HOOKS:
            self.assertIs(self.ns[name], first[name], name)
        call(self.ns, 'post_worker_init', FakeWorker())
        self.assertEqual(calls, [WORKER_PID])
        self.assertEqual(self.notifyd.pending(), [READY])

    def test_hook_defined_after_install_is_wrapped_by_next_install(self):
        notifyd_gunicorn.install(self.ns)
        calls = []
        self.ns['post_worker_init'] = lambda worker: calls.append(worker.pid)
        notifyd_gunicorn.install(self.ns)
        call(self.ns, 'post_worker_init', FakeWorker())
        self.assertEqual(calls, [WORKER_PID])
        self.assertEqual(self.notifyd.pending(), [READY])

    def test_user_hook_given_as_module_path(self):
        del STRING_HOOK_CALLS[:]
        self.ns['post_worker_init'] = __name__ + '.string_hook'
        notifyd_gunicorn.install(self.ns)
        call(self.ns, 'post_worker_init', FakeWorker())
        self.assertEqual(STRING_HOOK_CALLS, [WORKER_PID])
        self.assertEqual(self.notifyd.pending(), [READY])

    def test_user_hook_that_is_not_callable_is_refused(self):
        self.ns['worker_exit'] = 42
        with self.assertRaisesRegex(TypeError, 'worker_exit'):
            notifyd_gunicorn.install(self.ns)

    def test_user_post_worker_init_raising_propagates_without_ready(self):
        def user_hook(worker):
            raise RuntimeError('user hook failed')

        self.ns['post_worker_init'] = user_hook
        notifyd_gunicorn.install(self.ns)
        worker = FakeWorker()
        with self.assertRaisesRegex(RuntimeError, 'user hook failed'):
            call(self.ns, 'post_worker_init', worker)
        self.assertEqual(self.notifyd.pending(), [])
        self.assertEqual(worker.log.warnings, [])

    def test_exit_hooks_send_stopping_when_user_hook_raises(self):
        for name in EXIT_HOOKS:
            with self.subTest(hook=name):
                def user_hook(server, worker):
                    raise RuntimeError('user hook failed')

                self.ns[name] = user_hook
                notifyd_gunicorn.install(self.ns)
                with self.assertRaisesRegex(RuntimeError, 'user hook failed'):
                    call(self.ns, name, FakeWorker())
                self.assertEqual(self.notifyd.pending(), [MESSAGES[name]])

    @unittest.skipUnless(importlib.util.find_spec('gunicorn'),
                         'gunicorn is not installed')
    def test_gunicorn_accepts_the_hooks(self):
        from gunicorn.config import Config

        notifyd_gunicorn.install(self.ns)
        config = Config()
        for name in ALL_HOOKS + REQUEST_HOOKS:
            config.set(name, self.ns[name])
            self.assertIs(getattr(config, name), self.ns[name])


class NotifydDownTest(SocketTestCase):

    def test_hooks_log_one_warning_and_return(self):
        missing = os.path.join(self.dir, 'missing', 'notify.sock')
        stale = os.path.join(self.dir, 'stale.sock')
        Receiver(stale).close()  # leaves a socket file nobody listens on
        cases = [
            ('missing path', missing, '[Errno 2] No such file or directory'),
            ('no listener', stale, '[Errno 111] Connection refused'),
        ]
        for case, path, error in cases:
            for name in ALL_HOOKS:
                with self.subTest(case=case, hook=name):
                    ns = {'notifyd_socket': path}
                    notifyd_gunicorn.install(ns)
                    worker, server = FakeWorker(), FakeServer()
                    self.assertIsNone(call(ns, name, worker, server))
                    log = server.log if name in EXIT_HOOKS else worker.log
                    state = MESSAGES[name].split(b'\n')[0].decode()
                    self.assertEqual(log.warnings, [
                        'notifyd: could not send %s for pid 4321 to %s: %s'
                        % (state, path, error)])

    def test_full_queue_times_out_with_a_warning(self):
        path = os.path.join(self.dir, 'notify.sock')
        notifyd = self.receiver(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as flood:
            flood.connect(path)
            flood.setblocking(False)
            sent = 0
            while True:
                try:
                    flood.send(b'WATCHDOG=1')
                except BlockingIOError:
                    break
                sent += 1
        ns = {'notifyd_socket': path}
        notifyd_gunicorn.install(ns)
        worker = FakeWorker()
        self.assertIsNone(call(ns, 'post_worker_init', worker))
        self.assertEqual(worker.log.warnings, [
            'notifyd: could not send READY=1 for pid 4321 to %s: timed out'
            % path])
        self.assertEqual(notifyd.pending(), [b'WATCHDOG=1'] * sent)

    def test_without_gunicorn_log_warns_through_logging(self):
        ns = {'notifyd_socket': os.path.join(self.dir, 'missing.sock')}
        notifyd_gunicorn.install(ns)
        worker = FakeWorker()
        del worker.log
        with self.assertLogs('notifyd_gunicorn', logging.WARNING) as logs:
            self.assertIsNone(call(ns, 'post_worker_init', worker))
        self.assertEqual(len(logs.records), 1)
        self.assertIn('could not send READY=1 for pid 4321',
                      logs.records[0].getMessage())


class ReannounceTest(SocketTestCase):
    """A ready worker repeats READY=1, so a restarted notifyd learns it."""

    # INTERVAL is short, so that the tests see several repetitions; nothing
    # asserts how long one takes.
    INTERVAL = 0.02

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.dir, 'notify.sock')
        retry = mock.patch.object(_reporter, 'RETRY', self.INTERVAL)
        retry.start()
        self.addCleanup(retry.stop)

    def watch_reannouncer(self):
        """Record each re-announcement the thread makes, and each wait it
        chooses; return (attempts, waits), a semaphore released once per
        re-announcement and a list of the waits chosen so far."""
        attempts, waits = threading.Semaphore(0), []
        reannounce = _reporter.Reporter._reannounce
        next_wait = _reporter.Reporter._next

        def counted(announcer):
            reannounce(announcer)
            attempts.release()

        def recorded(announcer):
            wait = next_wait(announcer)
            waits.append(wait)
            return wait
        for name, spy in (('_reannounce', counted), ('_next', recorded)):
            patch = mock.patch.object(_reporter.Reporter, name, spy)
            patch.start()
            self.addCleanup(patch.stop)
        return attempts, waits

    @staticmethod
    def reannouncers():
        return {thread for thread in threading.enumerate()
                if thread.name == 'notifyd-reannounce'}

    def reannouncer_ended(self, before):
        """Wait until the re-announcer threads started since before have
        ended: none of them can send again."""
        for thread in self.reannouncers() - before:
            thread.join(timeout=30)
            self.assertFalse(thread.is_alive(),
                             'the re-announcer outlived STOPPING=1')

    def test_ready_repeats_until_stopping(self):
        notifyd = self.receiver(self.path)
        ns = {'notifyd_socket': self.path,
              'notifyd_reannounce': self.INTERVAL}
        notifyd_gunicorn.install(ns)
        worker, server = FakeWorker(), FakeServer()
        before = self.reannouncers()
        call(ns, 'post_worker_init', worker)
        for _ in range(4):
            data, credentials = notifyd.receive()
            self.assertEqual(data, READY)
            self.assertEqual(credentials, OUR_CREDENTIALS)
        call(ns, 'worker_exit', worker, server)
        seen = []
        while not seen or seen[-1] != MESSAGES['worker_exit']:
            seen.append(notifyd.receive()[0])
        self.assertEqual(set(seen[:-1]) - {READY}, set(), seen)
        # No READY=1 after STOPPING=1: the thread that would send it ends.
        self.reannouncer_ended(before)
        self.assertEqual(notifyd.pending(), [])
        self.assertEqual(worker.log.warnings, [])

    def test_a_failed_ready_is_sent_again_once_notifyd_is_back(self):
        attempts, _ = self.watch_reannouncer()
        ns = {'notifyd_socket': self.path,
              'notifyd_reannounce': 3600}
        notifyd_gunicorn.install(ns)
        worker = FakeWorker()
        call(ns, 'post_worker_init', worker)
        self.assertEqual(len(worker.log.warnings), 1, worker.log.warnings)
        self.assertIn('could not send READY=1 for pid 4321',
                      worker.log.warnings[0])
        # Several retries fail while nothing listens; one warning says so.
        for _ in range(3):
            self.assertTrue(attempts.acquire(timeout=30),
                            'the re-announcer did not retry')
        notifyd = self.receiver(self.path)
        data, credentials = notifyd.receive()
        self.assertEqual(data, READY)
        self.assertEqual(credentials, OUR_CREDENTIALS)
        self.assertEqual(len(worker.log.warnings), 1, worker.log.warnings)
        # The thread logs once its send has returned, which may be after the
        # datagram arrived here.
        reached = ['notifyd: READY=1 for pid 4321 reached %s' % self.path]
        eventually(self, 'the line saying so',
                   lambda: worker.log.infos == reached)

    def test_zero_turns_it_off(self):
        attempts, waits = self.watch_reannouncer()
        notifyd = self.receiver(self.path)
        ns = {'notifyd_socket': self.path, 'notifyd_reannounce': 0}
        notifyd_gunicorn.install(ns)
        call(ns, 'post_worker_init', FakeWorker())
        self.assertEqual(notifyd.receive()[0], READY)
        # The thread has chosen to wait for ever (None): nothing repeats.
        eventually(self, 'the re-announcer to choose its wait',
                   lambda: waits != [])
        self.assertEqual(waits, [None])
        self.assertFalse(attempts.acquire(blocking=False))
        self.assertEqual(notifyd.pending(), [])

    def test_interval(self):
        cases = [
            ('default', {}, 10.0, False),
            ('seconds', {'notifyd_reannounce': 2}, 2.0, False),
            ('a string of seconds', {'notifyd_reannounce': '2.5'}, 2.5, False),
            ('off', {'notifyd_reannounce': 0}, 0.0, False),
            ('not a number', {'notifyd_reannounce': 'x'}, 10.0, True),
            ('negative', {'notifyd_reannounce': -1}, 10.0, True),
            ('infinite', {'notifyd_reannounce': float('inf')}, 10.0, True),
            ('not a number at all', {'notifyd_reannounce': float('nan')},
             10.0, True),
            ('a boolean', {'notifyd_reannounce': True}, 10.0, True),
            ('None is the default', {'notifyd_reannounce': None}, 10.0,
             False),
        ]
        for case, ns, want, logged in cases:
            with self.subTest(case=case):
                with self.assertLogs('notifyd_gunicorn', 'ERROR') as logs:
                    got = notifyd_gunicorn.reannounce_interval(ns)
                    logging.getLogger('notifyd_gunicorn').error('end')
                self.assertEqual(got, want)
                errors = logs.output[:-1]
                if logged:
                    self.assertEqual(len(errors), 1, errors)
                    self.assertIn('notifyd_reannounce %r must be a number '
                                  'of seconds, 0 or more; using 10'
                                  % (ns['notifyd_reannounce'],), errors[0])
                else:
                    self.assertEqual(errors, [])

    def test_interval_from_the_environment(self):
        os.environ['NOTIFYD_REANNOUNCE'] = '3'
        self.assertEqual(notifyd_gunicorn.reannounce_interval({}), 3.0)
        self.assertEqual(notifyd_gunicorn.reannounce_interval(
            {'notifyd_reannounce': 4}), 4.0)


def activity_of(data):
    """Return (in_flight, requests, busy_usec) from a datagram's activity.

    None when the datagram carries none.
    """
    fields = dict(line.split(b'=', 1) for line in data.split(b'\n'))
    keys = (b'X_NOTIFYD_IN_FLIGHT', b'X_NOTIFYD_REQUESTS',
            b'X_NOTIFYD_BUSY_USEC')
    if not any(k in fields for k in keys):
        return None
    return tuple(int(fields[k]) for k in keys)


class Request:
    """Stands for gunicorn's Request, which the hooks may mark."""


class ActivityTest(SocketTestCase):
    """Without an activity page (no memfd on the system), pre_request and
    post_request report the worker's activity by datagrams."""

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.dir, 'notify.sock')
        self.notifyd = self.receiver(self.path)
        retry = mock.patch.object(_reporter, 'RETRY', 0.02)
        retry.start()
        self.addCleanup(retry.stop)
        datagrams_only(self)

    def boot(self, ns=None, reannounce=3600):
        """Install the hooks and boot a worker, as gunicorn would."""
        self.ns = ns if ns is not None else {}
        self.ns.setdefault('notifyd_socket', self.path)
        self.ns.setdefault('notifyd_reannounce', reannounce)
        notifyd_gunicorn.install(self.ns)
        self.worker = FakeWorker()
        call(self.ns, 'post_worker_init', self.worker)
        self.assertEqual(self.notifyd.receive()[0], DATAGRAM_READY)

    def pre(self, req):
        self.assertIsNone(self.ns['pre_request'](self.worker, req))

    def post(self, req):
        self.assertIsNone(
            self.ns['post_request'](self.worker, req, {}, None))

    def next_activity(self):
        data, credentials = self.notifyd.receive()
        self.assertEqual(credentials, OUR_CREDENTIALS)
        return data, activity_of(data)

    def test_a_request_is_reported_as_it_begins_and_ends(self):
        self.boot()
        req = Request()
        before = time.monotonic()
        self.pre(req)
        data, (in_flight, requests, busy) = self.next_activity()
        # Nothing but the activity: the sender is the worker itself.
        self.assertEqual(data.split(b'\n')[:2], [b'X_NOTIFYD_IN_FLIGHT=1',
                                                 b'X_NOTIFYD_REQUESTS=0'])
        self.assertEqual(len(data.split(b'\n')), 3)
        # Busy time so far: the request has just begun.
        self.assertLessEqual(busy, (time.monotonic() - before) * 1e6)
        time.sleep(0.05)
        self.post(req)
        elapsed = time.monotonic() - before
        _, (in_flight, requests, busy) = self.next_activity()
        self.assertEqual((in_flight, requests), (0, 1))
        # Busy time covers the request, and no more than the test took.
        self.assertGreaterEqual(busy, 50000)
        self.assertLessEqual(busy, elapsed * 1e6)
        self.assertEqual(self.notifyd.pending(), [])
        self.assertEqual(self.worker.log.warnings, [])

    def test_concurrent_requests_count_once_in_busy_time(self):
        # As in a gthread worker: three requests overlap.
        self.boot()
        reqs = [Request() for _ in range(3)]
        seen = []
        start = time.monotonic()
        for req in reqs:
            self.pre(req)
            seen.append(self.next_activity()[1])
        time.sleep(0.05)
        for req in reqs:
            self.post(req)
            seen.append(self.next_activity()[1])
        elapsed = time.monotonic() - start
        self.assertEqual([(f, r) for f, r, _ in seen],
                         [(1, 0), (2, 0), (3, 0), (2, 1), (1, 2), (0, 3)])
        busy = [b for _, _, b in seen]
        self.assertEqual(busy, sorted(busy))
        # Wall time with a request in flight, not the sum over requests.
        self.assertGreaterEqual(busy[-1], 50000)
        self.assertLessEqual(busy[-1], elapsed * 1e6)

    def test_threads_converge_through_a_full_queue(self):
        # Eight threads serve 800 requests while the receiver reads nothing:
        # its short queue fills, sends fail, and the worker's re-announcement
        # carries the truth once notifyd reads again. Snapshots arrive in
        # the order they were taken, so no counter ever goes backwards.
        # A short interval caps the retries' back-off.
        self.boot(reannounce=0.5)
        threads, per_thread = 8, 100

        def serve():
            for _ in range(per_thread):
                req = Request()
                self.ns['pre_request'](self.worker, req)
                self.ns['post_request'](self.worker, req, {}, None)

        workers = [threading.Thread(target=serve) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(GUARD)
            self.assertFalse(w.is_alive(), 'a request hook blocked')
        want = (0, threads * per_thread)
        last = (0, 0, 0)
        reports = 0
        while last[:2] != want:
            data, snapshot = self.next_activity()
            reports += not data.startswith(b'READY=1\n')
            self.assertGreaterEqual(snapshot[1], last[1], data)
            self.assertGreaterEqual(snapshot[2], last[2], data)
            last = snapshot
        self.assertLess(reports, 2 * threads * per_thread,
                        'nothing was lost: the test proves nothing about '
                        'recovery')

    def test_notifyd_gone_and_back(self):
        self.boot()
        self.notifyd.close()
        os.unlink(self.path)
        req = Request()
        self.pre(req)  # refused: the request goes on, the thread wakes
        self.post(req)
        # The thread's re-announcement fails too, and says so once.
        deadline = time.monotonic() + GUARD
        while not self.worker.log.warnings:
            self.assertLess(time.monotonic(), deadline, 'no warning')
            time.sleep(0.01)
        notifyd = self.receiver(self.path)
        data, _ = notifyd.receive()
        self.assertTrue(data.startswith(b'READY=1\nPID=4321\n'), data)
        self.assertEqual(activity_of(data)[:2], (0, 1))
        self.assertEqual(len(self.worker.log.warnings), 1,
                         self.worker.log.warnings)
        self.assertIn('could not send READY=1 for pid 4321',
                      self.worker.log.warnings[0])
        reached = ['notifyd: READY=1 for pid 4321 reached %s' % self.path]
        eventually(self, 'the line saying so',
                   lambda: self.worker.log.infos == reached)
        # Connected again: the next request is reported at once.
        req = Request()
        self.pre(req)
        self.assertEqual(activity_of(notifyd.receive()[0])[:2], (1, 1))

    def test_post_without_pre_counts_nothing(self):
        self.boot()
        self.post(Request())
        req = Request()
        self.pre(req)
        self.assertEqual(self.next_activity()[1][:2], (1, 0))
        self.post(req)
        self.post(req)  # twice: only the first ends it
        self.assertEqual(self.next_activity()[1][:2], (0, 1))
        self.assertEqual(self.notifyd.pending(), [])

    def test_a_request_that_cannot_be_marked_is_not_counted(self):
        self.boot()
        req = object()  # takes no attributes
        self.pre(req)
        self.post(req)
        self.assertEqual(self.notifyd.pending(), [])

    def test_outside_a_booted_worker_nothing_is_sent(self):
        # As in the master, where post_worker_init never ran.
        ns = {'notifyd_socket': self.path}
        notifyd_gunicorn.install(ns)
        req = Request()
        self.assertIsNone(ns['pre_request'](FakeWorker(), req))
        self.assertIsNone(ns['post_request'](FakeWorker(), req, {}, None))
        self.assertEqual(self.notifyd.pending(), [])

    def test_nothing_follows_stopping(self):
        self.boot()
        req = Request()
        self.pre(req)
        self.next_activity()
        call(self.ns, 'worker_exit', self.worker)
        self.assertEqual(self.notifyd.receive()[0], MESSAGES['worker_exit'])
        self.post(req)
        self.pre(Request())
        self.assertEqual(self.notifyd.pending(), [])

    def test_reannouncement_carries_the_activity(self):
        self.boot(reannounce=0.02)
        req = Request()
        self.pre(req)
        self.post(req)
        self.pre(Request())
        # A repetition sent before the hooks ran carries less; one after
        # them carries one request in flight and one finished.
        while True:
            data, snapshot = self.next_activity()
            if data.startswith(b'READY=1\nPID=4321\n') and snapshot[:2] == (1, 1):
                break

    def test_user_hooks_run_first_and_see_their_arguments(self):
        calls = []

        def two(worker, req):
            calls.append(('post', 2, worker, req))

        def three(worker, req, environ):
            calls.append(('post', 3, worker, req, environ))

        def four(worker, req, environ, resp):
            calls.append(('post', 4, worker, req, environ, resp))

        def spread(*args):
            calls.append(('post', '*') + args)

        def pre(worker, req):
            calls.append(('pre', worker, req, self.notifyd.pending()))

        for user, want in [(two, 2), (three, 3), (four, 4), (spread, '*')]:
            with self.subTest(arity=want):
                del calls[:]
                self.boot({'pre_request': pre, 'post_request': user})
                req, environ, resp = Request(), {'PATH_INFO': '/'}, object()
                self.pre(req)
                self.assertEqual(calls, [('pre', self.worker, req, [])])
                self.next_activity()
                self.ns['post_request'](self.worker, req, environ, resp)
                args = (self.worker, req, environ, resp)
                arity = 4 if want == '*' else want
                self.assertEqual(calls[1], ('post', want) + args[:arity])
                self.assertEqual(self.next_activity()[1][:2], (0, 1))
                self.stop_announcer()

    def test_post_request_of_another_arity_is_refused(self):
        for hook in (lambda worker: None, lambda a, b, c, d, e: None):
            with self.subTest(hook=hook):
                with self.assertRaisesRegex(TypeError, 'post_request'):
                    notifyd_gunicorn.install({'post_request': hook})

    def test_request_is_counted_when_user_hooks_raise(self):
        def pre(worker, req):
            raise RuntimeError('user pre_request failed')

        def post(worker, req, environ, resp):
            raise RuntimeError('user post_request failed')

        self.boot({'pre_request': pre, 'post_request': post})
        req = Request()
        # gunicorn calls post_request even when pre_request raised.
        with self.assertRaisesRegex(RuntimeError, 'user pre_request'):
            self.ns['pre_request'](self.worker, req)
        self.assertEqual(self.next_activity()[1][:2], (1, 0))
        with self.assertRaisesRegex(RuntimeError, 'user post_request'):
            self.ns['post_request'](self.worker, req, {}, None)
        self.assertEqual(self.next_activity()[1][:2], (0, 1))


class SocketResolutionTest(SocketTestCase):

    def test_resolution_order(self):
        def at(*parts):
            return os.path.join(self.dir, *parts)

        os.mkdir(at('run'))
        os.mkdir(at('run2'))
        os.mkdir(at('cwd'))
        receivers = {
            'ns': at('ns.sock'),
            'env': at('env.sock'),
            'runtime': at('run', 'notify.sock'),
            'runtime2': at('run2', 'notify.sock'),
            'default': at('cwd', 'notify.sock'),
            'relative': at('cwd', 'relative.sock'),
            'systemd': at('systemd.sock'),
        }
        receivers = {k: self.receiver(v) for k, v in receivers.items()}
        everything = {
            'NOTIFYD_SOCKET': at('env.sock'),
            'RUNTIME_DIRECTORY': at('run'),
            'NOTIFY_SOCKET': at('systemd.sock'),
        }
        cases = [
            ('notifyd_socket wins', {'notifyd_socket': at('ns.sock')},
             everything, 'ns', at('ns.sock')),
            ('empty notifyd_socket is unset', {'notifyd_socket': ''},
             everything, 'env', at('env.sock')),
            ('NOTIFYD_SOCKET', {}, everything, 'env', at('env.sock')),
            ('RUNTIME_DIRECTORY', {},
             {'RUNTIME_DIRECTORY': at('run'),
              'NOTIFY_SOCKET': at('systemd.sock')},
             'runtime', at('run', 'notify.sock')),
            ('first of several RUNTIME_DIRECTORY', {},
             {'RUNTIME_DIRECTORY': at('run2') + ':' + at('run')},
             'runtime2', at('run2', 'notify.sock')),
            ('default never uses NOTIFY_SOCKET', {},
             {'NOTIFY_SOCKET': at('systemd.sock')},
             'default', at('cwd', 'notify.sock')),
            ('relative path is absolute from install time',
             {'notifyd_socket': 'relative.sock'}, {},
             'relative', at('cwd', 'relative.sock')),
        ]
        for case, ns, env, want, address in cases:
            with self.subTest(case=case):
                os.chdir(at('cwd'))
                with mock.patch.dict(os.environ, env):
                    self.assertEqual(notifyd_gunicorn.resolve_socket(ns),
                                     address)
                    notifyd_gunicorn.install(ns)
                os.chdir(self.dir)  # the hook must not depend on the cwd
                worker = FakeWorker()
                call(ns, 'post_worker_init', worker)
                self.assertEqual(worker.log.warnings, [])
                for name, receiver in receivers.items():
                    got = receiver.pending()
                    if name == want:
                        self.assertEqual(got, [READY])
                    else:
                        self.assertEqual(got, [], name)

    def test_abstract_socket(self):
        name = 'nd-test-%d-%s' % (os.getpid(), os.path.basename(self.dir))
        notifyd = self.receiver('\0' + name)
        ns = {'notifyd_socket': '@' + name}
        self.assertEqual(notifyd_gunicorn.resolve_socket(ns), '@' + name)
        notifyd_gunicorn.install(ns)
        worker = FakeWorker()
        call(ns, 'post_worker_init', worker)
        data, credentials = notifyd.receive()
        self.assertEqual(data, READY)
        self.assertEqual(credentials, OUR_CREDENTIALS)
        self.assertEqual(worker.log.warnings, [])


@unittest.skipUnless(importlib.util.find_spec('gunicorn'),
                     'gunicorn is not installed')
class GunicornTest(SocketTestCase):
    """Runs real gunicorn with the example config and app."""

    def start_gunicorn(self, path):
        log = open(os.path.join(self.dir, 'gunicorn.log'), 'w+')
        self.addCleanup(log.close)
        env = dict(os.environ, NOTIFYD_SOCKET=path)
        proc = subprocess.Popen(
            [sys.executable, '-m', 'gunicorn',
             '--config', os.path.join(EXAMPLE, 'gunicorn.conf.py'),
             '--chdir', EXAMPLE, '--bind', '127.0.0.1:0', 'hello:app'],
            env=env, stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        self.addCleanup(stop)

        def show_log():
            log.seek(0)
            return log.read()

        return proc, show_log

    def collect(self, notifyd, done, show_log):
        """Receive datagrams until done(datagrams) is true."""
        datagrams = []
        while not done(datagrams):
            try:
                datagrams.append(notifyd.receive())
            except socket.timeout:
                self.fail('datagrams so far: %r\ngunicorn log:\n%s'
                          % (datagrams, show_log()))
        return datagrams

    def test_workers_report_ready_and_stopping(self):
        path = os.path.join(self.dir, 'notify.sock')
        notifyd = self.receiver(path)
        proc, show_log = self.start_gunicorn(path)
        master = proc.pid

        def ready(datagrams):
            return {c[0] for d, c in datagrams if d.startswith(b'READY=1\n')}

        def stopped_by_master(datagrams):
            return {int(d.split(b'PID=')[1]) for d, c in datagrams
                    if d.startswith(b'STOPPING=1\n') and c[0] == master}

        first = self.collect(notifyd, lambda d: len(ready(d)) == 2, show_log)
        self.assertEqual(len(first), 2, first)
        for data, credentials in first:
            self.assertEqual(data, b'READY=1\nPID=%d\nX_NOTIFYD_PAGE=1'
                             % credentials[0])
            self.assertEqual(parent_of(credentials[0]), master)
        old = ready(first)

        listening = re.search(r'Listening at: (http://[\d.:]+)', show_log())
        self.assertIsNotNone(listening, show_log())
        url = listening.group(1) + '/'
        with urllib.request.urlopen(url, timeout=GUARD) as answer:
            self.assertEqual(answer.read(), b'hello\n')

        # A reload replaces both workers and keeps the master.
        proc.send_signal(signal.SIGHUP)
        reload = self.collect(
            notifyd,
            lambda d: len(ready(d) - old) == 2 and stopped_by_master(d) == old,
            show_log)
        new = ready(reload) - old
        self.assertEqual(new & old, set())
        for pid in new:
            self.assertEqual(parent_of(pid), master)

        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(GUARD), 0, show_log())
        # A worker may repeat its READY=1 before it stops.
        rest = notifyd.pending()
        stopping = sorted(d for d in rest if d.startswith(b'STOPPING=1\n'))
        self.assertEqual({d for d in rest if d.startswith(b'READY=1\n')}
                         - {b'READY=1\nPID=%d\nX_NOTIFYD_PAGE=1' % pid
                            for pid in new}, set())
        self.assertEqual(
            stopping, sorted([b'STOPPING=1\nPID=%d' % pid for pid in new] * 2),
            show_log())
        self.assertNotIn('Traceback', show_log())


def parent_of(pid):
    with open('/proc/%d/stat' % pid) as f:
        stat = f.read()
    # The command name may hold spaces; the fields after it do not.
    return int(stat.rpartition(')')[2].split()[1])


if __name__ == '__main__':
    unittest.main()


# NO_SYSCALL_SCRIPT boots a worker with the hooks against the socket in
# argv[1], then serves argv[2] requests between two marker system calls
# that strace shows.
NO_SYSCALL_SCRIPT = '''
import os, sys
import notifyd_gunicorn

class Log:
    def warning(self, *a): pass
    def info(self, *a): pass

class Worker:
    pid = os.getpid()
    log = Log()

class Request:
    pass

ns = {'notifyd_socket': sys.argv[1], 'notifyd_reannounce': 3600}
notifyd_gunicorn.install(ns)
worker = Worker()
ns['post_worker_init'](worker)
requests = [Request() for _ in range(int(sys.argv[2]))]
os.access('/notifyd-marker-begin', os.F_OK)
for req in requests:
    ns['pre_request'](worker, req)
    ns['post_request'](worker, req, {}, None)
os.access('/notifyd-marker-end', os.F_OK)
'''


class PageTest(SocketTestCase):
    """pre_request and post_request write into the worker's activity page,
    which READY=1 carries, and make no system call."""

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.dir, 'notify.sock')
        self.notifyd = self.receiver(self.path)

    def boot(self):
        self.ns = {'notifyd_socket': self.path, 'notifyd_reannounce': 3600}
        notifyd_gunicorn.install(self.ns)
        self.worker = FakeWorker()
        call(self.ns, 'post_worker_init', self.worker)
        data, credentials, fds = self.notifyd.receive_fds()
        self.assertEqual(data, READY)
        self.assertEqual(credentials, OUR_CREDENTIALS)
        self.assertEqual(len(fds), 1)
        self.addCleanup(os.close, fds[0])
        return fds[0]

    def read(self, fd):
        """Return the page's words as notifyd reads them."""
        with mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ) as mem:
            return struct.unpack_from('6Q', mem)

    def test_ready_carries_a_sealed_page(self):
        fd = self.boot()
        self.assertEqual(os.fstat(fd).st_size, 4096)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        self.assertEqual(seals & fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SHRINK)
        self.assertEqual(seals & fcntl.F_SEAL_SEAL, fcntl.F_SEAL_SEAL)
        with self.assertRaises(PermissionError):
            os.ftruncate(fd, 0)
        header, seq, in_flight, requests, busy, _ = self.read(fd)
        self.assertEqual(header, 0x4750444e | 1 << 32)
        self.assertEqual((seq, in_flight, requests, busy), (0, 0, 0, 0))

    def test_requests_are_written_into_the_page(self):
        fd = self.boot()
        reqs = [Request() for _ in range(42)]
        for req in reqs:
            self.ns['pre_request'](self.worker, req)
        _, seq, in_flight, requests, _, since = self.read(fd)
        self.assertEqual((in_flight, requests), (42, 0))
        self.assertEqual(seq % 2, 0)
        self.assertLessEqual(since, time.monotonic_ns() // 1000)
        for req in reqs:
            self.ns['post_request'](self.worker, req, {}, None)
        _, seq, in_flight, requests, busy, _ = self.read(fd)
        self.assertEqual((in_flight, requests), (0, 42))
        self.assertEqual(seq, 2 * 84)
        self.assertGreater(busy, 0)
        # Nothing was sent for the requests.
        self.assertEqual(self.notifyd.pending(), [])

    def test_reannouncement_passes_the_same_page(self):
        fd = self.boot()
        notifyd_gunicorn._announcer._reannounce()
        data, _, fds = self.notifyd.receive_fds()
        self.assertEqual(data, READY)
        self.assertEqual(len(fds), 1)
        self.addCleanup(os.close, fds[0])
        self.assertEqual(os.fstat(fds[0]).st_ino, os.fstat(fd).st_ino)

    def test_threads_lose_no_count(self):
        fd = self.boot()

        def serve():
            for _ in range(2000):
                req = Request()
                self.ns['pre_request'](self.worker, req)
                self.ns['post_request'](self.worker, req, {}, None)

        threads = [threading.Thread(target=serve) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.read(fd)[2:4], (0, 8000))

    def test_request_hooks_make_no_system_call(self):
        trace = os.path.join(self.dir, 'trace')
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run(
            ['strace', '-f', '-o', trace, sys.executable, '-c',
             NO_SYSCALL_SCRIPT, self.path, '1000'],
            env=env, check=True, timeout=GUARD)
        with open(trace) as f:
            lines = f.read().splitlines()
        begin = [i for i, l in enumerate(lines) if 'notifyd-marker-begin' in l]
        end = [i for i, l in enumerate(lines) if 'notifyd-marker-end' in l]
        self.assertEqual((len(begin), len(end)), (1, 1), lines[-20:])
        # The thread that serves the requests, as strace -f marks its lines;
        # the worker's other thread (the re-announcement) may be seen
        # going to sleep meanwhile, off the requests' path.
        tid = lines[begin[0]].split()[0]
        between = [l for l in lines[begin[0] + 1:end[0]]
                   if l.split()[0] == tid and 'access resumed>' not in l]
        self.assertEqual(between, [])
        data, _, fds = self.notifyd.receive_fds()
        for fd in fds:
            os.close(fd)
        self.assertTrue(data.endswith(b'\nX_NOTIFYD_PAGE=1'), data)
        self.assertEqual(len(fds), 1)
        self.assertEqual(self.notifyd.pending(), [])
