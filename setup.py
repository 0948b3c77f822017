"""Builds notifyd and notify with Go and puts them in the wheel's scripts.

setuptools' own scripts handling reads each script as Python source, so it
refuses a binary: build_scripts here compiles the two commands straight into
its build directory instead, and install_scripts copies them from there into
the wheel's .data/scripts, which pip installs into the environment's bin with
their mode. The binaries are static (CGO_ENABLED=0: no ELF interpreter, no
shared library), so the wheel is tagged for every glibc and musl Linux of
the GOARCH it was built for: manylinux2014 (glibc 2.17) and musllinux 1.1,
never linux_<arch>, which PyPI refuses, and never any.

The build is reproducible: -trimpath and -buildvcs=false keep the build
directory and the checkout's state out of the binaries, and the wheel
package stamps every file with SOURCE_DATE_EPOCH when it is set (as
packaging/release sets it, to the commit's time).

Environment: GOARCH (default: Go's own, the build machine's) picks the
architecture, GO the go command (default: go on PATH).
"""

import os
import shutil
import subprocess
import sys

from setuptools import setup

try:
    from setuptools.command.build_scripts import build_scripts
except ImportError:  # setuptools before 68 takes distutils' command
    from distutils.command.build_scripts import build_scripts

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools before 70.1 has it in the wheel package
    from wheel.bdist_wheel import bdist_wheel

COMMANDS = ('notifyd', 'notify')

# PLATFORMS maps GOARCH to the wheel's platform tags: pip on glibc 2.17 or
# later takes the first two, pip on musl 1.1 or later the third.
PLATFORMS = {
    arch: 'manylinux_2_17_{0}.manylinux2014_{0}.musllinux_1_1_{0}'.format(m)
    for arch, m in (('amd64', 'x86_64'), ('arm64', 'aarch64'))
}


def go_command():
    go = os.environ.get('GO') or shutil.which('go')
    if not go:
        sys.exit('building the notifyd wheel needs Go: put go on PATH, or set GO')
    return go


def goarch():
    arch = os.environ.get('GOARCH')
    if not arch:
        arch = subprocess.run([go_command(), 'env', 'GOARCH'], check=True,
                              capture_output=True, text=True).stdout.strip()
    if arch not in PLATFORMS:
        sys.exit('GOARCH=%s: the wheel is built for %s only'
                 % (arch, ', '.join(sorted(PLATFORMS))))
    return arch


class BuildGo(build_scripts):
    """Compiles notifyd and notify, static and stripped, into build_dir."""

    def run(self):
        os.makedirs(self.build_dir, exist_ok=True)
        env = dict(os.environ, CGO_ENABLED='0', GOOS='linux', GOARCH=goarch())
        command = [go_command(), 'build', '-trimpath', '-buildvcs=false',
                   '-ldflags=-s -w', '-o', self.build_dir + os.sep]
        command += ['./cmd/' + name for name in COMMANDS]
        self.announce('running %s' % ' '.join(command), level=2)
        subprocess.run(command, check=True, env=env,
                       cwd=os.path.dirname(os.path.abspath(__file__)))

    def get_outputs(self):
        return [os.path.join(self.build_dir, name) for name in COMMANDS]


class PlatformWheel(bdist_wheel):
    """Tags the wheel for the architecture of the binaries it holds."""

    def finalize_options(self):
        super().finalize_options()
        # Binaries for one platform: installed as platform files, never
        # taken for pure Python.
        self.root_is_pure = False

    def get_tag(self):
        return 'py3', 'none', PLATFORMS[goarch()]


setup(
    # Names only: BuildGo makes these files rather than copying them.
    scripts=['cmd/' + name for name in COMMANDS],
    cmdclass={'build_scripts': BuildGo, 'bdist_wheel': PlatformWheel},
)
