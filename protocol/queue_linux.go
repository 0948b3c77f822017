package protocol

import (
	"os"
	"strconv"
	"strings"
)

// SystemdQueueLength is the net.unix.max_dgram_qlen systemd sets when it
// boots the machine.
const SystemdQueueLength = 512

// queueLengthFile holds the queue length a new datagram socket gets.
const queueLengthFile = "/proc/sys/net/unix/max_dgram_qlen"

// ShortQueue reports how many datagrams a socket made now queues, and
// whether that is fewer than under systemd. The kernel's default is 10, and
// a container with a network namespace of its own starts with it: a sender
// then waits whenever ten datagrams are queued, so a master starting many
// workers at once registers them more slowly. A length that cannot be read
// is not short.
func ShortQueue() (n int, short bool) { return shortQueue(queueLengthFile) }

func shortQueue(file string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil && n < SystemdQueueLength
}
