"""A worker's activity page: shared memory that notifyd reads when asked.

A worker that serves requests (a gunicorn worker, an ASGI server, a Celery
worker process) creates one Page, passes its descriptor to notifyd once with
READY=1 (see MESSAGE and notifyd._client.send()), and from then on only
writes into it:

    page = Page()             # raises OSError where memfds are not available
    send(address, 'READY=1\n' + MESSAGE, page)
    page.begin()              # a request begins: memory writes, no system call
    page.end()                # it ends
    page.close()              # the worker is done

After a notifyd restart, send the same page again with the next READY=1:
notifyd takes the page it already holds again as a no-op, and refuses a
different one for the same worker.

begin() and end() never make a system call and never block on notifyd:
whether notifyd is up, slow or gone, they cost a few memory writes. With
several threads in flight (gthread), a lock keeps their counts whole; it
costs no system call unless two threads meet in it, and then only as long
as the other's few writes. Under gevent and eventlet the lock is theirs, and
nothing here yields.

The page is a memfd of SIZE bytes, sealed so that it can neither shrink nor
grow (notifyd maps it, and a mapped file that shrank would crash it). Its
64-bit words, in the machine's byte order:

    0  MAGIC | VERSION << 32
    1  sequence: odd while the words below change (a sequence lock)
    2  requests in flight now
    3  requests finished since the page was made
    4  microseconds busy (at least one request in flight), up to word 5
    5  CLOCK_MONOTONIC microseconds when requests in flight last left 0

notifyd adds the time since word 5 while requests are in flight, so busy
time is exact at the moment it reads, even in the middle of a long request.
CLOCK_MONOTONIC, not the wall clock: the two processes share it, and it
never jumps when the wall clock is set.

This module uses the standard library only and imports nothing of gunicorn.
"""

import fcntl
import mmap
import os
import threading
import time

__all__ = ['MESSAGE', 'SIZE', 'Page']

# SIZE, MAGIC and VERSION are notifyd's (protocol.PageSize, PageMagic,
# PageVersion): a page of another size or header is refused.
SIZE = 4096
MAGIC = 0x4750444e  # b'NDPG' as a little-endian 32-bit number
VERSION = 1

# MESSAGE is the key that comes with READY=1 and the page's descriptor.
MESSAGE = 'X_NOTIFYD_PAGE=1'

_HEADER, _SEQ, _IN_FLIGHT, _REQUESTS, _BUSY_USEC, _BUSY_SINCE = range(6)

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class Page:
    """One worker's activity page, mapped read-write.

    Raises OSError when it cannot be made (no memfd_create, no room); the
    caller then reports activity some other way, or not at all.
    """

    def __init__(self):
        fd = os.memfd_create('notifyd-activity',
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, SIZE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._mem = mmap.mmap(fd, SIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        # A memoryview of 64-bit words: each assignment is one aligned
        # 8-byte store, which a reader never sees half done. The counts are
        # kept in Python too, so that a change only stores into the page.
        self._words = memoryview(self._mem).cast('Q')
        self._words[_HEADER] = MAGIC | VERSION << 32
        self._lock = threading.Lock()
        self._seq = 0
        self._in_flight = 0
        self._requests = 0
        self._busy = 0  # µs, up to _since
        self._since = 0  # CLOCK_MONOTONIC µs when in flight left 0

    def begin(self):
        """Count a request that has begun. No system call; never raises."""
        with self._lock:
            w = self._words
            seq = self._seq
            w[_SEQ] = seq + 1
            n = self._in_flight
            if not n:
                self._since = w[_BUSY_SINCE] = time.monotonic_ns() // 1000
            self._in_flight = w[_IN_FLIGHT] = n + 1
            self._seq = w[_SEQ] = seq + 2

    def end(self):
        """Count a request that has ended. No system call; never raises.

        Call it once for every begin().
        """
        with self._lock:
            w = self._words
            seq = self._seq
            w[_SEQ] = seq + 1
            n = self._in_flight
            if n == 1:
                self._busy = w[_BUSY_USEC] = (
                    self._busy + time.monotonic_ns() // 1000 - self._since)
            if n:
                self._in_flight = w[_IN_FLIGHT] = n - 1
            self._requests = w[_REQUESTS] = self._requests + 1
            self._seq = w[_SEQ] = seq + 2

    def snapshot(self):
        """Return (in_flight, requests, busy_usec) as notifyd reads them."""
        with self._lock:
            busy = self._busy
            if self._in_flight:
                busy += time.monotonic_ns() // 1000 - self._since
            return self._in_flight, self._requests, busy

    def close(self):
        """Unmap the page and close its descriptor; notifyd keeps its own
        mapping until the worker leaves. Idempotent."""
        if self.fd < 0:
            return
        self._words.release()
        self._mem.close()
        os.close(self.fd)
        self.fd = -1

