// Package protocol is notifyd's side of the sd_notify wire protocol: it parses
// and encodes notification messages, and it owns the Unix datagram socket they
// arrive on.
//
// The protocol is the one systemd documents in sd_notify(3):
// https://www.freedesktop.org/software/systemd/man/sd_notify.html
//
// # Datagrams
//
// One datagram is one message of at most MaxDatagramSize bytes. A message is a
// list of KEY=VALUE assignments separated by newlines:
//
//	READY=1
//	PID=1234
//	STATUS=serving requests
//
// The one-line form, with assignments separated by spaces, is accepted too:
//
//	READY=1 PID=1234
//
// STATUS= takes the rest of its line, spaces included. A datagram that was
// truncated, or that holds a NUL byte anywhere but as its single last byte, is
// rejected whole.
//
// # Keys
//
//	READY=1             the worker is ready
//	RELOADING=1         the worker is not ready until its next READY=1; from
//	                    the application's main process, a reload of the
//	                    instance (see the registry package)
//	STOPPING=1          the worker leaves the registry now
//	STATUS=text         one line of free text kept with the worker
//	PID=n, MAINPID=n    the message is about pid n, not about the sender
//	WATCHDOG=1          heartbeat
//	WATCHDOG_USEC=n     arms the heartbeat deadline for the worker
//	WATCHDOG=trigger    the worker declares itself failed
//	ERRNO=n             the worker declares itself failed with error n
//	BARRIER=1           alone, with exactly one file descriptor: the receiver
//	                    closes the descriptor once everything sent before it
//	                    has been applied
//	X_NOTIFYD_DRAIN=1   notifyd's extension: drain the instance (0 undrains);
//	                    only root and notifyd's own user may send it
//	X_NOTIFYD_EXPECT=n  notifyd's extension, alone: the instance is now
//	                    configured to run n workers (--expect at run time);
//	                    only root and notifyd's own user may send it
//	X_NOTIFYD_IN_FLIGHT=n, X_NOTIFYD_REQUESTS=n, X_NOTIFYD_BUSY_USEC=n
//	                    notifyd's extension: the worker's activity, as
//	                    absolute values (requests in flight now, requests
//	                    finished and microseconds busy since it booted);
//	                    the three come together, as one snapshot
//
// Keys notifyd has no use for (EXTEND_TIMEOUT_USEC, MONOTONIC_USEC, FDSTORE,
// FDNAME and any unknown key) are accepted and ignored, as systemd does. These
// reject the whole message: a known key with a value it cannot take (such as
// a negative, non-decimal or empty activity value, an in-flight count beyond
// 32 bits or a counter beyond 64 bits), a key given twice with two different
// values, PID= and MAINPID= that disagree, two lifecycle keys at once, and
// only some of the three activity keys.
//
// # Credentials and descriptors
//
// The socket sets SO_PASSCRED, so the kernel attaches the sender's pid, uid and
// gid to every datagram. A message without PID= or MAINPID= is about the
// sender's own pid. Every file descriptor that arrives with a datagram is
// closed before the next datagram is read; none is ever kept.
package protocol
