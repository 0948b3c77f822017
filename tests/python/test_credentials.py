"""The hooks work for any valid uid and gid, as in a user namespace.

A uid or gid is unsigned: in a user namespace a worker may run as 2**31 or
more, and the credentials it attaches must still pack. Run from the
repository root:

    python3 -m unittest discover -s tests/python
"""

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# HIGH is a uid and gid above 2**31, which a signed 32-bit field cannot hold.
HIGH = 3000000000

# The worker's side: install the hooks, announce READY=1, say STOPPING=1,
# and print what the hooks logged. Any exception fails the test.
WORKER = '''
import os, sys
import notifyd_gunicorn

class Log:
    def __init__(self):
        self.lines = []
    def warning(self, msg, *args):
        self.lines.append(msg % args)
    info = debug = error = exception = warning

class Worker:
    pid = os.getpid()
    log = Log()

ns = {'notifyd_socket': sys.argv[1], 'notifyd_reannounce': 0}
notifyd_gunicorn.install(ns)
worker = Worker()
assert ns['post_worker_init'](worker) is None
assert ns['worker_exit'](None, worker) is None
print(os.getuid(), os.getgid(), worker.log.lines)
'''


class HighIDsTest(unittest.TestCase):

    def setUp(self):
        self.unshare = shutil.which('unshare')
        if self.unshare is None:
            if os.environ.get('CI') == 'true':
                self.fail('unshare (util-linux) is missing')
            self.skipTest('no unshare here')
        self.dir = tempfile.mkdtemp(prefix='nd')
        self.addCleanup(shutil.rmtree, self.dir)

    def test_hooks_in_a_user_namespace_with_high_ids(self):
        path = os.path.join(self.dir, 'notify.sock')
        notifyd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notifyd.close)
        notifyd.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notifyd.bind(path)
        notifyd.settimeout(30)
        probe = subprocess.run(
            [self.unshare, '--user', '--map-user=%d' % HIGH,
             '--map-group=%d' % HIGH, 'true'], capture_output=True)
        if probe.returncode != 0:
            if os.environ.get('CI') == 'true':
                self.fail('no user namespace: %s' % probe.stderr.decode())
            self.skipTest('no user namespace here: %s' % probe.stderr.decode())
        env = dict(os.environ, PYTHONPATH=ROOT)
        worker = subprocess.run(
            [self.unshare, '--user', '--map-user=%d' % HIGH,
             '--map-group=%d' % HIGH, sys.executable, '-c', WORKER, path],
            env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(worker.returncode, 0, worker.stderr)
        self.assertEqual(worker.stdout, '%d %d []\n' % (HIGH, HIGH))
        size = socket.CMSG_SPACE(struct.calcsize('iII'))
        for want in (b'READY=1', b'STOPPING=1'):
            data, ancillary, _, _ = notifyd.recvmsg(4096, size)
            self.assertTrue(data.startswith(want), data)
            # The kernel accepted the credentials and shows them in this,
            # the parent, namespace: the worker's ids map to ours.
            creds = [struct.unpack('iII', d) for level, kind, d in ancillary
                     if level == socket.SOL_SOCKET
                     and kind == socket.SCM_CREDENTIALS]
            self.assertEqual([c[1:] for c in creds],
                             [(os.getuid(), os.getgid())])


if __name__ == '__main__':
    unittest.main()
