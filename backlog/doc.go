// Package backlog reads, from the kernel, how many connections wait in the
// accept queue of the application's listening sockets and how many the queue
// may hold. notifyd reports this saturation from outside the application: it
// asks the kernel, not a worker, so the answer comes just as fast when every
// worker is busy, which is when it matters.
//
// The health status must never depend on the queue. A full queue means the
// instance is loaded, not broken; failing its health check for that takes it
// out of rotation and moves its load onto the others, which then fill up and
// fail the same way. That feedback loop is what notifyd exists to prevent.
// The queue is for metrics, status output and load balancer weights.
//
// # Source
//
// The numbers come from sock_diag(7), the netlink interface ss(8) uses:
// https://man7.org/linux/man-pages/man7/sock_diag.7.html
//
// For a TCP socket in the LISTEN state, inet_diag reports the accept queue
// (connections that completed the handshake and wait for accept()) in
// idiag_rqueue and the backlog passed to listen(2) in idiag_wqueue, after the
// kernel capped it at net.core.somaxconn. unix_diag reports the same pair for
// a Unix listener in its UNIX_DIAG_RQLEN attribute. ss -l shows them as
// Recv-Q and Send-Q.
//
// A queue is full when Queued exceeds Limit: the kernel admits one
// connection more than the backlog. A TCP connection that arrives at a full
// queue is dropped or reset (net.ipv4.tcp_abort_on_overflow); a Unix client
// blocks in connect(2), or fails with EAGAIN if it is non-blocking.
//
// # Queue time
//
// A TCP connection waiting in the accept queue is a full socket, established
// (or close-wait once its client gave up), with no inode until accept(2)
// gives it a file. Its tcp_info (INET_DIAG_INFO) holds tcpi_last_data_recv,
// the milliseconds since it last received data: for a client that sent its
// request, how long the request has waited. The listener's sk_drops
// (SK_MEMINFO_DROPS in INET_DIAG_SKMEMINFO) counts what a full queue
// refused. For a Unix listener, UDIAG_SHOW_ICONS lists the inodes of the
// waiting connections but no time: the Reader notes when it first saw each
// one. The Sampler reads while every worker is busy, which is when a queue
// can form, so that the peak of the last minute misses no burst.
//
// Where sock_diag is refused, TCP queues are read from /proc/net/tcp and
// /proc/net/tcp6 (proc_net_tcp(5)), which show the queue but not its limit.
//
// sock_diag and /proc/net both answer for the network namespace of the
// process that asks: notifyd must share the application's.
package backlog
