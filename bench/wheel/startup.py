"""Measures the notifyd wheel and how soon managed mode answers 200.

    /usr/bin/python3 bench/wheel/startup.py [--runs N]

Builds the wheel from a clone of the committed tree, as a user would with
python3 -m build --wheel --no-isolation, installs it with pip --no-index
into a fresh venv over Debian's gunicorn, then starts gunicorn (2 sync
workers, hello:app, managed mode with healthcheck_require_workers = 2)
N times. For each run it times, from starting venv/bin/python -m gunicorn:

- the first 200 of the application itself (hello), for reference;
- the first 200 "2 workers ready" of notifyd's health check;
- the READY=1 a supervisor receives on the datagram socket set as the
  master's NOTIFY_SOCKET, as systemd's Type=notify does; and whether a
  probe sent as it arrives is 200.

Both addresses are polled every 5 ms, side by side; the supervisor's
socket is read by a thread meanwhile. It also times what judging the
settings adds to every read of the config file (at start and at each HUP):
notifyd --check, run by the installed module on the installed binary. It
prints a Markdown section for docs/PERFORMANCE.md.
"""

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
POLL = 0.005


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def answer(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return None


def one_run(python, src, work):
    app, health = free_port(), free_port()
    config = os.path.join(work, 'gunicorn.conf.py')
    with open(config, 'w') as f:
        f.write('import notifyd_gunicorn\n'
                'bind = "127.0.0.1:%d"\nworkers = 2\n'
                'healthcheck_bind = "127.0.0.1:%d"\n'
                'healthcheck_require_workers = 2\n'
                'healthcheck_directory = %r\n'
                'notifyd_gunicorn.start(globals())\n' % (app, health, work))
    want = {('http://127.0.0.1:%d/' % app): (200, 'hello\n'),
            ('http://127.0.0.1:%d/' % health): (200, '2 workers ready\n')}
    got = {}
    supervisor = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    supervisor.bind(os.path.join(work, 'sd.sock'))
    supervisor.settimeout(30)
    heard = {}

    def hear():
        # The first READY=1, and the health answer right after it.
        try:
            while True:
                data = supervisor.recv(4096).decode()
                if 'READY=1' in data.split('\n'):
                    heard['ready'] = time.monotonic() - began
                    heard['answer'] = answer(list(want)[1])
                    return
        except OSError:
            return

    began = time.monotonic()
    master = subprocess.Popen(
        [python, '-m', 'gunicorn', '--config', config, '--chdir',
         os.path.join(src, 'examples', 'gunicorn'), 'hello:app'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PATH='/usr/bin:/bin',
                 NOTIFY_SOCKET=os.path.join(work, 'sd.sock')),
        start_new_session=True)
    listener = threading.Thread(target=hear)
    listener.start()
    try:
        while len(got) < len(want):
            if time.monotonic() - began > 30:
                raise SystemExit('no 200 within 30 s')
            for url, expected in want.items():
                if url not in got and answer(url) == expected:
                    got[url] = time.monotonic() - began
            time.sleep(POLL)
        listener.join(30)
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait()
        supervisor.close()
    if 'ready' not in heard:
        raise SystemExit('the supervisor heard no READY=1')
    return [got[url] for url in want] + [heard['ready'],
                                         heard['answer'][0]]


# CHECKS is how many config reads are timed.
CHECKS = 41

_TIME_CHECKS = '''
import statistics, sys, time
from notifyd_gunicorn import _settings
times = []
for _ in range(int(sys.argv[1])):
    began = time.perf_counter()
    settings, problems = _settings.read({'healthcheck_bind': '127.0.0.1:0'})
    times.append(time.perf_counter() - began)
    assert settings is not None, problems
print(statistics.median(times) * 1000, max(times) * 1000)
'''


def time_checks(python):
    """Return the median and the longest time, in ms, that start() takes to
    read and check the seed's settings."""
    out = subprocess.run([python, '-c', _TIME_CHECKS, str(CHECKS)],
                         check=True, capture_output=True, text=True).stdout
    return [float(v) for v in out.split()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=7)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix='nd-wheel-bench')
    try:
        src = os.path.join(tmp, 'src')
        subprocess.run(['git', 'clone', '--quiet', ROOT, src], check=True)
        subprocess.run([sys.executable, '-m', 'build', '--wheel',
                        '--no-isolation'], cwd=src, check=True,
                       capture_output=True)
        dist = os.path.join(src, 'dist')
        wheel = os.listdir(dist)[0]
        size = os.path.getsize(os.path.join(dist, wheel))
        venv = os.path.join(tmp, 'venv')
        subprocess.run([sys.executable, '-m', 'venv',
                        '--system-site-packages', venv], check=True)
        python = os.path.join(venv, 'bin', 'python')
        subprocess.run([python, '-m', 'pip', 'install', '--no-index',
                        '--quiet', os.path.join(dist, wheel)], check=True)
        binaries = {name: os.path.getsize(os.path.join(venv, 'bin', name))
                    for name in ('notifyd', 'notify')}
        check_median, check_max = time_checks(python)
        runs = []
        for i in range(args.runs):
            work = os.path.join(tmp, 'run%d' % i)
            os.mkdir(work)
            runs.append(one_run(python, src, work))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    app = [r[0] * 1000 for r in runs]
    health = [r[1] * 1000 for r in runs]
    ready = [r[2] * 1000 for r in runs]
    after = [r[3] for r in runs]
    ratio = statistics.median(h / a for a, h in zip(app, health))
    print('## The wheel, and how soon managed mode answers\n')
    print('Command: `%s bench/wheel/startup.py --runs %d`\n'
          % (sys.executable, args.runs))
    print('Machine: %s %s, %d CPUs, Python %s, %s UTC\n' % (
        platform.system(), platform.release(), os.cpu_count(),
        platform.python_version(),
        time.strftime('%Y-%m-%d %H:%M', time.gmtime())))
    print('`%s`: %.1f MB (%d bytes); installed, `notifyd` is %.1f MB and '
          '`notify` %.1f MB (static, stripped).\n' % (
              wheel, size / 1e6, size, binaries['notifyd'] / 1e6,
              binaries['notify'] / 1e6))
    print('From starting `venv/bin/python -m gunicorn` (2 sync workers, '
          'managed mode) to the first 200, %d runs, polled every %d ms:\n'
          % (args.runs, POLL * 1000))
    print('| answer | median | min | max |')
    print('| --- | ---: | ---: | ---: |')
    for name, values in (('application (`hello`)', app),
                         ('notifyd, `2 workers ready`', health),
                         ('the supervisor\'s `READY=1`', ready)):
        print('| %s | %.0f ms | %.0f ms | %.0f ms |' % (
            name, statistics.median(values), min(values), max(values)))
    print('\nMedian ratio, notifyd / application, run by run: %.2f. '
          'The health check answers 200 once both workers have booted '
          'and said so; the application answers as soon as one worker '
          'accepts.' % ratio)
    print('\nThe supervisor\'s `READY=1` came from notifyd; a probe sent '
          'as it arrived answered %s in every run, so no READY=1 came '
          'before the health check\'s first 200. Median READY=1 minus '
          'first 200 polled, run by run: %+.0f ms (the poll\'s 5 ms '
          'interval and the probe in flight make up the difference).'
          % ('/'.join(sorted({str(a) for a in after})),
             statistics.median(r - h for r, h in zip(ready, health))))
    print('\nReading and checking the settings, which start() does at every '
          'read of the config file (at start and at each HUP) by running '
          '`notifyd --check`: median %.1f ms, at most %.1f ms, over %d reads.'
          % (check_median, check_max, CHECKS))


if __name__ == '__main__':
    main()
