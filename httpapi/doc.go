// Package httpapi serves what load balancers see: the health answer.
//
// Every method on every path answers it, as the seed package did, so a
// load balancer's "OPTIONS /" or "GET /healthz" both work. The status is 200
// when at least the required number of workers are ready and 500 otherwise;
// the body is the seed's text, "<ready> workers ready\n".
//
// The answer comes from the registry's in-memory summary, one atomic load: it
// never waits for the disk, for a lock held during I/O, or for another
// client. Server timeouts cut off clients that are slow or idle, and each
// connection has its own goroutine, so none of them delays anyone else.
package httpapi
