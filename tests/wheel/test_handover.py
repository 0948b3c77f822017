"""End to end: managed mode's hand-overs, with the wheel and real gunicorn.

A USR2 hands the sockets and their directory from one master to the next;
whatever order the masters get USR2, HUP, QUIT and SIGKILL in, the workers'
socket stays where they send, the directory has one owner at a time, and
nothing of a killed master is left behind. Run as test_wheel.py is.
"""

import fcntl
import os
import pwd
import grp
import re
import signal
import socket
import subprocess
import unittest

import test_wheel
from test_wheel import DEADLINE, alive, children, get, port_refused, wait_for

SOCKET_AT = re.compile(r'notify socket (/\S+)')
HANDOFF = 'NOTIFYD_GUNICORN_HANDOFF'
# QUICK_EXITS is how many exits in a row at start make the master give up.
QUICK_EXITS = 5


def new_master_of(master):
    """The master a USR2 of master started, once it runs."""
    def find():
        for pid in children(master):
            try:
                with open('/proc/%d/environ' % pid, 'rb') as f:
                    if b'\0GUNICORN_PID=%d\0' % master in b'\0' + f.read():
                        return pid
            except OSError:
                pass
        return None
    return wait_for('the new master', find)


class HandoverTest(test_wheel.ManagedTestCase):

    def config(self, **settings):
        # A master that a USR2 started reads its config for as long as the
        # file "slow" exists: it is not ready until the test says so.
        path = super().config(**settings)
        with open(path, 'a') as f:
            f.write('import os as _os, time as _time\n'
                    'while "GUNICORN_PID" in _os.environ and '
                    '_os.path.exists(%r):\n'
                    '    _time.sleep(0.05)\n' % os.path.join(self.dir, 'slow'))
        return path

    def slow_new_master(self):
        """Hold the next master a USR2 starts in its config; return the
        function that lets it go on."""
        path = os.path.join(self.dir, 'slow')
        open(path, 'w').close()

        def release():
            if os.path.exists(path):
                os.remove(path)
        self.addCleanup(release)
        return release

    def socket_path(self):
        return SOCKET_AT.search(self.log()).group(1)

    def assert_counted_through_hup(self, new_master, url, sock):
        """Both workers of new_master are counted, and still after a HUP of
        it; no worker ever missed the socket."""
        self.wait_health(url, 200, '2 workers ready\n')
        before = set(self.workers(new_master))
        os.kill(new_master, signal.SIGHUP)

        def reloaded():
            now = self.workers(new_master)
            return len(now) == 2 and not before & set(now)
        wait_for('the reload\'s workers', reloaded)
        self.wait_health(url, 200, '2 workers ready\n')
        self.assertTrue(os.path.exists(sock))
        self.assertNotIn('No such file or directory', self.log())

    def test_usr2_then_quit_before_the_new_master_is_ready(self):
        master = self.gunicorn()
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        sock = self.socket_path()
        release = self.slow_new_master()
        mark = len(self.log())
        master.send_signal(signal.SIGUSR2)
        new_master = new_master_of(master.pid)
        self.strays = [new_master]
        master.send_signal(signal.SIGQUIT)
        master.wait(DEADLINE)
        self.assertTrue(os.path.exists(sock))
        release()
        self.notifyd_started(after=mark)
        self.assert_counted_through_hup(new_master, url, sock)
        os.kill(new_master, signal.SIGTERM)
        wait_for('the socket directory to go',
                 lambda: not os.path.exists(os.path.dirname(sock)))

    def test_usr2_after_the_old_master_gave_up_then_quit(self):
        master = self.gunicorn()
        mark = 0
        for _ in range(QUICK_EXITS):
            pid, url = self.notifyd_started(after=mark)
            mark = len(self.log())
            os.kill(pid, signal.SIGKILL)
        wait_for('the master to give up', lambda: 'times in a row at start; '
                 'not starting it again' in self.log())
        sock = self.socket_path()
        mark = len(self.log())
        master.send_signal(signal.SIGUSR2)
        new_master = new_master_of(master.pid)
        self.strays = [new_master]
        self.notifyd_started(after=mark)
        self.wait_health(url, 200, '2 workers ready\n')
        master.send_signal(signal.SIGQUIT)
        master.wait(DEADLINE)
        self.assertTrue(os.path.exists(sock))
        self.assert_counted_through_hup(new_master, url, sock)

    def test_usr2_then_hup_of_the_old_master_with_a_change_then_quit(self):
        master = self.gunicorn()
        old, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        sock = self.socket_path()
        release = self.slow_new_master()
        master.send_signal(signal.SIGUSR2)
        new_master = new_master_of(master.pid)
        self.strays = [new_master]
        # The old master reloads with a changed setting while the new one
        # is not ready yet: it starts no second notifyd on the sockets.
        self.config(healthcheck_require_workers=1)
        before = set(self.workers(master.pid)) - {new_master}
        master.send_signal(signal.SIGHUP)

        def reloaded():
            now = set(self.workers(master.pid)) - {new_master}
            return len(now) == 2 and not before & now and now
        # Booted, so that the QUIT does not wait for a worker still booting.
        self.state_files(wait_for('the old master\'s reload', reloaded))
        self.assertEqual(self.notifyd_children(master.pid), [old])
        master.send_signal(signal.SIGQUIT)
        master.wait(DEADLINE)
        self.assertTrue(os.path.exists(sock))
        release()
        self.assert_counted_through_hup(new_master, url, sock)

    def test_leftover_or_forged_handoff_is_ignored_and_closed(self):
        forged = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        forged.bind(os.path.join(self.dir, 'forged.sock'))
        self.addCleanup(forged.close)
        listener = socket.create_server(('127.0.0.1', 0))
        self.addCleanup(listener.close)
        directory = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, directory)
        victim = subprocess.Popen(['sleep', '1000'])
        self.addCleanup(victim.kill)
        fds = (forged.fileno(), listener.fileno(), directory)
        value = 'notify=%d,http=%d,dir=%d,master=%d,pid=%d' % (
            fds + (os.getpid(), victim.pid))
        master = self.gunicorn(_env={HANDOFF: value}, _pass_fds=fds)
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        lines = [line for line in self.log().splitlines()
                 if 'ignoring %s=' % HANDOFF in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn('[WARNING] notifyd: ', lines[0])
        self.assertIn('its descriptors are closed', lines[0])
        self.assertNotEqual(self.socket_path(), forged.getsockname())
        self.assertIsNone(victim.poll())
        # Closed in the master: its descriptors name none of them.
        ours = {os.readlink('/proc/self/fd/%d' % fd) for fd in fds}
        held = set()
        for fd in os.listdir('/proc/%d/fd' % master.pid):
            try:
                held.add(os.readlink('/proc/%d/fd/%s' % (master.pid, fd)))
            except OSError:
                pass
        self.assertEqual(ours & held, set())

    def test_managed_flags_in_notifyd_args_are_refused(self):
        probe = socket.create_server(('127.0.0.1', 0))
        port = probe.getsockname()[1]
        probe.close()
        master = self.gunicorn(healthcheck_bind='127.0.0.1:%d' % port,
                               notifyd_args=['--exit-with', '1'])
        wait_for('workers', lambda: len(self.workers(master.pid)) == 2)
        errors = self.error_lines()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("notifyd_args ['--exit-with', '1']: --exit-with is "
                      "managed mode's own", errors[0])
        self.assertEqual(self.notifyd_children(master.pid), [])
        self.strays = self.workers(master.pid)
        master.send_signal(signal.SIGKILL)
        master.wait(DEADLINE)
        wait_for('the health port to be let go',
                 lambda: port_refused('127.0.0.1:%d' % port))

    def test_an_exit_at_once_is_never_lost(self):
        # A notifyd that accepts its flags, then exits as it starts.
        script = os.path.join(self.dir, 'exits')
        with open(script, 'w') as f:
            f.write('#!/bin/sh\n[ "$1" = --check ] && exit 0\nexit 1\n')
        os.chmod(script, 0o755)
        self.gunicorn(notifyd_binary=script)
        quick = QUICK_EXITS
        wait_for('the master to give up', lambda: '%d times in a row at '
                 'start; not starting it again' % quick in self.log())
        self.assertEqual(self.log().count('notifyd: started %s' % script),
                         quick)

    def test_masters_killed_with_sigkill_leave_no_socket_directory(self):
        tmp = os.path.join(self.dir, 'tmp')
        os.mkdir(tmp)
        env = {'TMPDIR': tmp}
        # Directories that are not a dead master's of this user: another
        # user's, one whose lock a live master holds, and one whose socket
        # a master of an older version still reads.
        others = ['notifyd-%s' % (c * 12) for c in 'abc']
        for name in others:
            os.mkdir(os.path.join(tmp, name), 0o700)
        os.chown(os.path.join(tmp, others[0]), 65534, 65534)
        held = os.open(os.path.join(tmp, others[1]), os.O_RDONLY)
        self.addCleanup(os.close, held)
        fcntl.flock(held, fcntl.LOCK_EX)
        read = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        read.bind(os.path.join(tmp, others[2], 'notify.sock'))
        self.addCleanup(read.close)

        for _ in range(5):
            master = self.gunicorn(_env=env)
            pid, url = self.notifyd_started()
            self.strays = self.workers(master.pid)
            master.send_signal(signal.SIGKILL)
            master.wait(DEADLINE)
            wait_for('notifyd to exit', lambda: not alive(pid))
        self.gunicorn(_env=env)
        self.notifyd_started()
        live = os.path.basename(os.path.dirname(self.socket_path()))
        # gunicorn's workers keep files of their own there too.
        ours = [n for n in os.listdir(tmp) if n.startswith('notifyd-')]
        self.assertEqual(sorted(ours), sorted(others + [live]))

    @unittest.skipUnless(os.geteuid() == 0, 'needs root to run workers as '
                         'another user')
    def test_root_master_never_hands_the_directory_over(self):
        # The workers, run as nobody, import the application from here.
        for path in (self.tmp, self.dir):
            os.chmod(path, 0o755)
        user = pwd.getpwnam('nobody')
        group = grp.getgrgid(user.pw_gid)
        master = self.gunicorn(user=user.pw_name, group=group.gr_name)
        pid, url = self.notifyd_started()
        self.wait_health(url, 200, '2 workers ready\n')
        sock = self.socket_path()
        directory = os.path.dirname(sock)
        st = os.stat(directory)
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o7777),
                         (0, user.pw_gid, 0o710))
        st = os.lstat(sock)
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777),
                         (user.pw_uid, user.pw_gid, 0o600))
        # The workers' user can swap nothing in it for a link.
        swap = subprocess.run(
            ['setpriv', '--reuid', str(user.pw_uid), '--regid',
             str(user.pw_gid), '--clear-groups', 'sh', '-c',
             'ln -s /etc/shadow "$1"/x || mv "$1"/notify.sock "$1"/y', '-',
             directory], capture_output=True, text=True)
        self.assertNotEqual(swap.returncode, 0)
        self.assertIn('Permission denied', swap.stderr)
        self.assertEqual(os.listdir(directory), ['notify.sock'])
        master.send_signal(signal.SIGTERM)
        master.wait(DEADLINE)
        self.assertFalse(os.path.exists(directory))


if __name__ == '__main__':
    unittest.main()
