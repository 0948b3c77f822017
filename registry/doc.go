//go:build linux

// Package registry keeps the set of workers that told notifyd they are ready,
// and answers how many of them count.
//
// A registered pid counts only while all of these hold:
//   - its last lifecycle message was READY=1;
//   - its process exists and is not a zombie;
//   - it is the process that registered: its start time (field 22 of
//     /proc/<pid>/stat) is the one recorded then;
//   - if it has a heartbeat deadline, its last WATCHDOG=1 is within it.
//
// Exits are seen through one pidfd per worker, all waited on in one epoll
// loop: a pidfd becomes readable the moment its process exits, so the
// registry needs no polling and does not wake up while nothing happens.
// Kernels without pidfd_open get a kill(0) and /proc sweep instead.
//
// The registry mirrors every ready worker as one state file, named by a
// pattern such as ".gunicorn.worker.{}" with {} replaced by the pid, holding
// KEY=VALUE lines:
//
//	PID=1234
//	STARTTIME=8812345
//	READY_AT=2026-11-24T20:19:36.123456789Z
//	STATUS=serving
//	WATCHDOG_USEC=30000000
//
// Files are written to "<name>.tmp" and renamed into place, so a reader never
// sees a part of one. At start the registry adopts the files whose process is
// still the same process and deletes the others. A directory that cannot be
// written costs the files, never the answer: the registry lives in memory.
//
// Workers may report their activity (requests in flight, requests finished,
// busy time), which the registry keeps per worker and sums for the instance
// (Activity). The sums count what workers reported to this notifyd, so they
// never go down when a worker leaves. Activity never registers a worker,
// never writes a state file and never changes the health answer: a busy
// worker is not a broken one.
//
// The health answer reads Summary, which is one atomic load: it never waits
// for the disk or for a lock held during I/O. Activity is atomic loads too.
package registry
