"""Tests for notifyd.celery, with Celery's own signals sent as a prefork
pool process sends them, against a real Unix datagram socket.

Run from the repository root:

    python3 -m unittest discover -s tests/python
"""

import logging
import os
import unittest

from notifyd import _reporter
from test_notifyd_gunicorn import SocketTestCase, activity_of, datagrams_only

try:
    from celery import signals
except ImportError:
    signals = None

import notifyd.celery

PID = os.getpid()


def fields(data):
    return dict(line.split(b'=', 1) for line in data.split(b'\n'))


@unittest.skipIf(signals is None and os.environ.get('CI') != 'true',
                 'Celery is not installed')
class CeleryTest(SocketTestCase):

    def setUp(self):
        super().setUp()
        # The activity in datagrams, where this test can read it; the page
        # itself is tested with the gunicorn hooks.
        datagrams_only(self)
        self.path = os.path.join(self.dir, 'notify.sock')
        self.notifyd = self.receiver(self.path)

    def test_pool_process_lifecycle_and_tasks(self):
        notifyd.celery.install(socket=self.path, reannounce=0)
        notifyd.celery.install(socket=self.path, reannounce=0)  # idempotent
        signals.worker_process_init.send(sender=None)
        ready = fields(self.notifyd.receive()[0])
        self.assertEqual((ready[b'READY'], ready[b'PID']), (b'1', b'%d' % PID))
        self.assertNotIn(b'WATCHDOG_USEC', ready)

        for task_id in ('a', 'b'):
            signals.task_prerun.send(sender=None, task_id=task_id)
            signals.task_postrun.send(sender=None, task_id=task_id)
        signals.task_postrun.send(sender=None, task_id='never begun')
        seen = [activity_of(self.notifyd.receive()[0])[:2] for _ in range(4)]
        self.assertEqual(seen, [(1, 0), (0, 1), (1, 1), (0, 2)])

        signals.worker_process_shutdown.send(sender=None)
        self.assertEqual(self.notifyd.receive()[0],
                         b'STOPPING=1\nPID=%d' % PID)
        self.assertEqual(self.notifyd.pending(), [])
        self.assertIsNone(_reporter.current())

    def test_deadline_beats_only_between_tasks(self):
        notifyd.celery.install(socket=self.path, reannounce=0,
                               task_deadline=0.2)
        signals.worker_process_init.send(sender=None)
        ready = fields(self.notifyd.receive()[0])
        self.assertEqual(ready[b'WATCHDOG_USEC'], b'200000')
        # Idle: a READY=1 at least every half deadline.
        self.assertEqual(fields(self.notifyd.receive()[0])[b'READY'], b'1')

        signals.task_prerun.send(sender=None, task_id='t')
        begun = fields(self.notifyd.receive()[0])
        self.assertEqual((begun[b'X_NOTIFYD_IN_FLIGHT'], begun[b'WATCHDOG']),
                         (b'1', b'1'))
        # While the task runs the thread stays silent, so that a hung task
        # is caught: e2e's TestCeleryPrefork shows notifyd marking it hung.
        signals.task_postrun.send(sender=None, task_id='t')
        ended = fields(self.notifyd.receive()[0])
        self.assertEqual((ended[b'X_NOTIFYD_IN_FLIGHT'], ended[b'WATCHDOG']),
                         (b'0', b'1'))
        signals.worker_process_shutdown.send(sender=None)

    def test_bad_deadline_is_one_error_and_no_deadline(self):
        for value in ('soon', 0, -1, float('inf'), True):
            with self.subTest(value=value):
                with self.assertLogs('notifyd.celery', logging.ERROR) as logs:
                    notifyd.celery.install(socket=self.path,
                                           task_deadline=value)
                self.assertEqual(len(logs.output), 1)
                self.assertIn('task_deadline %r must be a number of seconds'
                              % (value,), logs.output[0])
                self.assertEqual(notifyd.celery._settings.watchdog_usec, 0)

    def test_deadline_from_the_environment(self):
        os.environ['NOTIFYD_TASK_DEADLINE'] = '2.5'
        notifyd.celery.install(socket=self.path)
        self.assertEqual(notifyd.celery._settings.watchdog_usec, 2500000)


if __name__ == '__main__':
    unittest.main()
