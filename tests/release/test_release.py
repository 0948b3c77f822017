"""The release: packaging/release run twice on one commit, in two clones
whose files have different times, and every artifact checked.

Run from the repository root with Debian's interpreter:

    /usr/bin/python3 -m unittest discover -s tests/release

Both releases are built once, in setUpClass, and every test reads the
first one's artifacts. It needs Go, go-md2man, readelf (binutils),
dpkg-deb, twine, qemu-aarch64 (qemu-user) and python3-debian.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import zipfile

from debian.copyright import Copyright

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# DEADLINE bounds every wait: it stops a broken run, it times nothing.
DEADLINE = 60.0

# The architectures released: Go's name, the wheel's, Debian's, ELF's.
ARCHES = [
    ('amd64', 'x86_64', 'amd64', 62),
    ('arm64', 'aarch64', 'arm64', 183),
]
COMMANDS = ('notifyd', 'notify')


def run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          **kwargs)


def wheel_name(version, arch):
    return ('notifyd-{0}-py3-none-manylinux_2_17_{1}.manylinux2014_{1}.'
            'musllinux_1_1_{1}.whl'.format(version, arch))


def release(src):
    """Run packaging/release in src; return its dist directory."""
    try:
        run(os.path.join(src, 'packaging', 'release'), cwd=src)
    except subprocess.CalledProcessError as err:
        raise AssertionError('packaging/release failed:\n%s' % err.stderr)
    return os.path.join(src, 'dist')


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(what, cond):
    deadline = time.monotonic() + DEADLINE
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(0.05)


class ReleaseTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='nd-release')
        first = os.path.join(cls.tmp, 'first')
        second = os.path.join(cls.tmp, 'elsewhere', 'second')
        for src in (first, second):
            run('git', 'clone', '--quiet', ROOT, src)
        # The second clone's files are twenty-five years older.
        old = 981173106
        for top, dirs, files in os.walk(second):
            dirs[:] = [d for d in dirs if d != '.git']
            for name in dirs + files:
                os.utime(os.path.join(top, name), (old, old),
                         follow_symlinks=False)
        with open(os.path.join(first, 'VERSION')) as f:
            cls.version = f.read().strip()
        cls.src = first
        cls.dist = release(first)
        cls.second_dist = release(second)
        cls.unpacked = os.path.join(cls.tmp, 'unpacked')
        cls.binaries = {}  # (artifact, command) -> path
        for goarch, arch, debarch, _ in ARCHES:
            wheel = wheel_name(cls.version, arch)
            where = os.path.join(cls.unpacked, wheel)
            with zipfile.ZipFile(os.path.join(cls.dist, wheel)) as z:
                z.extractall(where)
            deb = 'notifyd_%s_%s.deb' % (cls.version, debarch)
            run('dpkg-deb', '-x', os.path.join(cls.dist, deb),
                os.path.join(cls.unpacked, deb))
            for name in COMMANDS:
                path = os.path.join(where, 'notifyd-%s.data' % cls.version,
                                    'scripts', name)
                os.chmod(path, 0o755)  # zipfile drops the mode
                cls.binaries[wheel, name] = path
                cls.binaries[deb, name] = os.path.join(
                    cls.unpacked, deb, 'usr', 'bin', name)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def artifacts(self):
        names = []
        for _, arch, debarch, _ in ARCHES:
            names += [wheel_name(self.version, arch),
                      'notifyd_%s_%s.deb' % (self.version, debarch)]
        return sorted(names)

    def machine(self, artifact):
        return next(m for _, arch, debarch, m in ARCHES
                    if artifact.endswith(('_%s.whl' % arch,
                                          '_%s.deb' % debarch)))

    def test_every_artifact_with_its_sha256(self):
        self.assertEqual(sorted(os.listdir(self.dist)),
                         sorted(self.artifacts() + ['SHA256SUMS']))
        out = run('sha256sum', '--check', '--strict', 'SHA256SUMS',
                  cwd=self.dist).stdout
        self.assertEqual(out, ''.join('%s: OK\n' % name
                                      for name in self.artifacts()))

    def test_two_builds_are_byte_identical(self):
        with open(os.path.join(self.dist, 'SHA256SUMS')) as f:
            first = f.read()
        with open(os.path.join(self.second_dist, 'SHA256SUMS')) as f:
            second = f.read()
        self.assertEqual(first, second)
        for name in self.artifacts():
            with open(os.path.join(self.dist, name), 'rb') as a, \
                    open(os.path.join(self.second_dist, name), 'rb') as b:
                self.assertTrue(a.read() == b.read(), name)

    def test_binaries_are_static_for_their_architecture(self):
        for (artifact, name), path in sorted(self.binaries.items()):
            with self.subTest(artifact=artifact, binary=name):
                header = run('readelf', '--file-header', '--wide',
                             path).stdout
                self.assertIn('Type:                              EXEC',
                              header)
                with open(path, 'rb') as f:
                    machine = int.from_bytes(f.read(20)[18:20], 'little')
                self.assertEqual(machine, self.machine(artifact))
                segments = run('readelf', '--program-headers', '--wide',
                               path).stdout
                self.assertIn('LOAD', segments)
                self.assertNotIn('INTERP', segments)
                dynamic = run('readelf', '--dynamic', '--wide', path).stdout
                self.assertNotIn('(NEEDED)', dynamic)
                self.assertIn('There is no dynamic section', dynamic)

    def test_wheel_tags_and_metadata(self):
        for _, arch, _, _ in ARCHES:
            wheel = wheel_name(self.version, arch)
            with zipfile.ZipFile(os.path.join(self.dist, wheel)) as z:
                info = z.read('notifyd-%s.dist-info/WHEEL'
                              % self.version).decode()
                metadata = z.read('notifyd-%s.dist-info/METADATA'
                                  % self.version).decode()
            tags = [line[len('Tag: '):] for line in info.splitlines()
                    if line.startswith('Tag: ')]
            self.assertEqual(sorted(tags), sorted(
                'py3-none-%s_%s' % (plat, arch) for plat in
                ('manylinux_2_17', 'manylinux2014', 'musllinux_1_1')))
            self.assertIn('Root-Is-Purelib: false\n', info)
            self.assertIn('License: Apache-2.0\n', metadata)
            self.assertIn('Classifier: License :: OSI Approved :: Apache '
                          'Software License\n', metadata)

    def test_twine_check_passes_on_every_wheel(self):
        # twine checks what PyPI takes: wheels (the .debs are not its).
        wheels = [os.path.join(self.dist, n) for n in self.artifacts()
                  if n.endswith('.whl')]
        result = subprocess.run(['twine', 'check', '--strict'] + wheels,
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.count('PASSED'), len(wheels),
                         result.stdout)

    def test_every_linked_module_has_its_license(self):
        with open(os.path.join(ROOT, 'third_party', 'copyright'), 'rb') as f:
            repository = f.read()
        licenses = os.path.join(ROOT, 'third_party', 'licenses')
        saved = [os.path.relpath(top, licenses)
                 for top, _, files in os.walk(licenses)
                 if any(f.upper().startswith(('LICENSE', 'COPYING'))
                        for f in files)]
        with open(os.path.join(ROOT, 'LICENSE'), 'rb') as f:
            apache = f.read()
        self.assertIn(b'Apache License\n', apache)
        self.assertIn(b'Version 2.0, January 2004', apache)
        for (artifact, name), path in sorted(self.binaries.items()):
            with self.subTest(artifact=artifact, binary=name):
                if artifact.endswith('.whl'):
                    info = os.path.join(self.unpacked, artifact,
                                        'notifyd-%s.dist-info' % self.version)
                    with open(os.path.join(info, 'LICENSE'), 'rb') as f:
                        self.assertEqual(f.read(), apache)
                    carried = os.path.join(info, 'copyright')
                else:
                    carried = os.path.join(self.unpacked, artifact, 'usr',
                                           'share', 'doc', 'notifyd',
                                           'copyright')
                with open(carried, 'rb') as f:
                    text = f.read()
                self.assertEqual(text, repository)
                copyright = Copyright(text.decode().splitlines(True),
                                      strict=True)
                patterns = {}
                for paragraph in copyright.all_files_paragraphs():
                    for pattern in paragraph.files:
                        patterns[pattern] = paragraph
                # The standard library and runtime, in every Go binary.
                self.assertIn('runtime/*', patterns)
                self.assertIn('Go Authors', patterns['runtime/*'].copyright)
                modules = self.linked_modules(path)
                if name == 'notifyd':
                    self.assertIn('github.com/coreos/go-systemd/v22',
                                  dict(modules))
                for module, version in modules:
                    prefix = '%s@%s/' % (module, version)
                    found = [p for pattern, p in patterns.items()
                             if pattern.startswith(prefix)]
                    self.assertTrue(found, 'no license for %s %s in %s'
                                    % (module, version, artifact))
                    for paragraph in found:
                        self.assertGreater(
                            len(paragraph.license.text), 200, module)
                    self.assertTrue(
                        [d for d in saved if d == module
                         or d.startswith(module + '/')],
                        'no license of %s in third_party/licenses' % module)

    def linked_modules(self, path):
        """The modules go version -m finds in a binary, notifyd's own left
        out: the list the linker wrote, not the one go.mod claims."""
        out = run('go', 'version', '-m', path).stdout
        modules = []
        for line in out.splitlines():
            fields = line.split()
            if fields[:1] == ['dep']:
                modules.append((fields[1], fields[2]))
            elif fields[:1] == ['=>']:
                modules[-1] = (fields[1], fields[2])
        self.assertIn('golang.org/x/sys', dict(modules))
        return modules

    def test_go_run_leaves_nothing_for_git(self):
        # README: go run ./cmd/notifyd writes ./notify.sock and its state
        # files in the current directory; .gitignore covers both.
        addresses = os.path.join(self.tmp, 'go-run.json')
        daemon = subprocess.Popen(
            ['go', 'run', './cmd/notifyd', '--bind', '127.0.0.1:0',
             '--address-file', addresses],
            cwd=self.src, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.addCleanup(daemon.wait)
        self.addCleanup(os.killpg, daemon.pid, signal.SIGKILL)
        wait_for('notifyd to write its addresses',
                 lambda: os.path.exists(addresses)
                 and os.path.getsize(addresses))
        with open(addresses) as f:
            self.assertEqual(json.load(f)['socket'], 'notify.sock')
        worker = subprocess.Popen(['sleep', '600'])
        self.addCleanup(worker.wait)
        self.addCleanup(worker.kill)
        run('go', 'run', './cmd/notify', '--pid', str(worker.pid), '--ready',
            cwd=self.src)
        self.assertTrue(os.path.exists(os.path.join(self.src, 'notify.sock')))
        self.assertTrue(os.path.exists(os.path.join(
            self.src, '.gunicorn.worker.%d' % worker.pid)))
        self.assertEqual(run('git', 'status', '--porcelain',
                             '--untracked-files=all', cwd=self.src).stdout,
                         '')

    def test_aarch64_binaries_run_under_qemu(self):
        for _, arch, debarch, _ in ARCHES[1:]:
            for artifact in (wheel_name(self.version, arch),
                             'notifyd_%s_%s.deb' % (self.version, debarch)):
                with self.subTest(artifact=artifact):
                    self.smoke(self.binaries[artifact, 'notifyd'],
                               self.binaries[artifact, 'notify'])

    def smoke(self, notifyd, notify):
        qemu = ['qemu-aarch64']
        for binary, name in ((notifyd, 'notifyd'), (notify, 'notify')):
            self.assertEqual(run(*qemu, binary, '--version').stdout,
                             '%s %s\n' % (name, self.version))
        work = tempfile.mkdtemp(prefix='nd', dir='/tmp')
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        sock = os.path.join(work, 'n.sock')
        addresses = os.path.join(work, 'addresses.json')
        log = open(os.path.join(work, 'notifyd.log'), 'w+')
        self.addCleanup(log.close)
        daemon = subprocess.Popen(
            qemu + [notifyd, '--socket', sock, '--bind', '127.0.0.1:0',
                    '--dir', work, '--address-file', addresses],
            stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.kill)
        wait_for('notifyd to write its addresses',
                 lambda: os.path.exists(addresses)
                 and os.path.getsize(addresses))
        with open(addresses) as f:
            url = 'http://%s/' % json.load(f)['http']
        self.assertEqual(get(url), (500, '0 workers ready\n'))
        worker = subprocess.Popen(['sleep', '600'])
        self.addCleanup(worker.wait)
        self.addCleanup(worker.kill)
        # notify waits for notifyd's barrier acknowledgement: once it
        # exits 0, the READY=1 is applied.
        run(*qemu, notify, '--socket', sock, '--pid', str(worker.pid),
            '--ready')
        self.assertEqual(get(url), (200, '1 workers ready\n'))
        daemon.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(DEADLINE), 0)
        log.seek(0)
        self.assertIn('notifyd stopped', log.read())


if __name__ == '__main__':
    unittest.main()
