package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// queueStatus is the listen_queues part of GET /status.
type queueStatus struct {
	Addr      string `json:"addr"`
	Listening bool   `json:"listening"`
	Queued    uint32 `json:"queued"`
	Limit     uint32 `json:"limit"`
}

func (d *daemon) queues(t *testing.T) []queueStatus {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + d.addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		ListenQueues []queueStatus `json:"listen_queues"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc.ListenQueues
}

// saturate occupies both sync workers of the gunicorn that d watches with
// slow requests, and once d shows both busy, opens extra connections that
// no worker can accept: they wait in the listen queue. It returns a
// function that closes them all.
func saturate(t *testing.T, d *daemon, network, addr string, extra int) (release func()) {
	t.Helper()
	var conns []net.Conn
	release = func() {
		for _, c := range conns {
			c.Close()
		}
		conns = nil
	}
	t.Cleanup(release)
	dial := func(request string) error {
		// A full queue drops new SYNs, and connect would retry for minutes.
		c, err := net.DialTimeout(network, addr, 3*time.Second)
		if err != nil {
			return err
		}
		conns = append(conns, c)
		fmt.Fprint(c, request)
		return nil
	}
	for range 2 {
		if err := dial("GET /sleep?s=4 HTTP/1.0\r\n\r\n"); err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
	}
	// Each worker has taken one of them once its activity page says so;
	// until then a worker could still accept one of the extra connections.
	waitFor(t, "both workers busy with a slow request", func() bool {
		doc := statusActivity(t, d)
		return doc.BusyWorkers == 2 && doc.InFlight == 2
	})
	for range extra {
		dial("GET / HTTP/1.0\r\n\r\n")
	}
	return release
}

func TestListenQueueOfBusyGunicorn(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			dir := shortDir(t)
			unixPath := filepath.Join(dir, "app.sock")
			port := freePort(t)
			tcpAddr := fmt.Sprintf("127.0.0.1:%d", port)
			watch, dialAddr := tcpAddr, tcpAddr
			if network == "unix" {
				watch, dialAddr = "unix:"+unixPath, unixPath
			}
			d := startNotifyd(t, dir, "--require", "2", "--listen-queue", watch, "--listen-queue", "127.0.0.1:1")
			s := startGunicornAt(t, d.socket, tcpAddr, "--bind", "unix:"+unixPath, "--backlog", "64", "--timeout", "30")
			waitSettled(t, d, s)
			if q := d.queues(t); len(q) != 2 || q[0].Queued != 0 || q[0].Limit != 64 || !q[0].Listening || q[1].Listening {
				t.Fatalf("idle listen queues %+v, want %s listening with 0/64 and 127.0.0.1:1 not listening", q, watch)
			}

			release := saturate(t, d, network, dialAddr, 20)
			var q []queueStatus
			waitFor(t, "15 or more queued connections", func() bool {
				q = d.queues(t)
				return q[0].Queued >= 15
			})
			if q[0].Addr != watch || q[0].Limit != 64 {
				t.Fatalf("busy listen queue %+v, want %s with limit 64", q[0], watch)
			}
			// The health check does not look at the queue: busy is not down.
			wantHealth(t, d, 200, "2 workers ready\n")

			release()
			waitFor(t, "the queue to drain", func() bool { return d.queues(t)[0].Queued == 0 })
		})
	}
}

func TestAgentWeightFollowsListenQueue(t *testing.T) {
	dir := shortDir(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startNotifyd(t, dir, "--require", "2", "--agent-bind", "127.0.0.1:0",
		"--listen-queue", addr, "--agent-weight", "queue", "--agent-weight-floor", "10")
	s := startGunicornAt(t, d.socket, addr, "--backlog", "8", "--timeout", "30")
	waitSettled(t, d, s)
	agent := d.agentAddr(t)
	if got := agentReply(t, agent); got != "ready up 100%\n" {
		t.Fatalf("idle agent reply %q, want \"ready up 100%%\\n\"", got)
	}

	// A full queue brings the weight down to the floor, and no lower.
	release := saturate(t, d, "tcp", addr, 10)
	waitFor(t, "the agent weight to reach the floor", func() bool {
		return agentReply(t, agent) == "ready up 10%\n"
	})
	release()
	waitFor(t, "the agent weight to come back", func() bool {
		return agentReply(t, agent) == "ready up 100%\n"
	})
}
