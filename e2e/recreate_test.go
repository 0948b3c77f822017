package e2e

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var (
	socketRemovedLine   = regexp.MustCompile(`(?m)^.*msg="notify socket file removed; re-creating it".*$`)
	socketRecreatedLine = regexp.MustCompile(`(?m)^.*msg="notify socket re-created".*$`)
)

// removeSocket deletes notifyd's socket file, as a cleanup job might, and
// waits for notifyd to say it has bound a new one at the path.
func removeSocket(t *testing.T, d *daemon, times int) {
	t.Helper()
	if err := os.Remove(d.socket); err != nil {
		t.Fatal(err)
	}
	waitFor(t, fmt.Sprintf("re-creation number %d of the socket", times), func() bool {
		return countLines(d.log.String(), socketRecreatedLine) == times
	})
	fi, err := os.Lstat(d.socket)
	if err != nil {
		t.Fatalf("after re-creation: %v", err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("re-created socket file has mode %v, want a socket with 0660", fi.Mode())
	}
}

// TestSocketFileRemovedIsRecreated deletes the notify socket from under a
// running notifyd, several times. Each time notifyd logs it and binds a new
// socket at the path with the same mode, so new senders reach it; a sender
// connected to the socket before a removal still reaches it until the next
// one; and notifyd holds only the latest replaced socket, so its
// descriptors do not grow with the number of removals.
func TestSocketFileRemovedIsRecreated(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	pid := d.cmd.Process.Pid
	early := dialNotifyd(t, d.socket) // connected to the first socket
	w1, w2, w3 := sleeper(t), sleeper(t), sleeper(t)
	registerReady(t, d, w1)

	removeSocket(t, d, 1)
	registerReady(t, d, w2) // through the new socket file
	if err := early.Send(fmt.Appendf(nil, "READY=1\nPID=%d", w3.Process.Pid), 0); err != nil {
		t.Fatalf("send on a connection made before the removal: %v", err)
	}
	barrier(t, early)
	want := sortedPids(w1, w2, w3)
	if got := statusPids(t, d); !slices.Equal(got, want) {
		t.Fatalf("registered pids %v, want %v", got, want)
	}
	wantHealth(t, d, 200, "3 workers ready\n")
	// From here on notifyd holds the current socket and the one it replaced.
	steady := fdCount(t, pid)

	for i := 2; i <= 5; i++ {
		removeSocket(t, d, i)
	}
	mustNotify(t, "--socket", d.socket, "--pid", pidString(w3), "--status", "after five removals")
	if got := countLines(d.log.String(), socketRemovedLine); got != 5 {
		t.Fatalf("%d log lines say the socket file was removed, want 5", got)
	}
	if got := fdCount(t, pid); got != steady {
		t.Fatalf("notifyd has %d descriptors after five removals, %d after the first; want no more:\n%s", got, steady, fdList(pid))
	}
	if got := statusPids(t, d); !slices.Equal(got, want) {
		t.Fatalf("registered pids %v after five removals, want %v", got, want)
	}
}

// TestSocketPathTakenAfterRemoval puts a regular file where the socket was.
// notifyd refuses to replace what is not its socket, says so, and keeps
// serving; once the file is gone it binds the socket again.
func TestSocketPathTakenAfterRemoval(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w := sleeper(t)

	other := d.socket + ".other"
	if err := os.WriteFile(other, []byte("not a socket\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, d.socket); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "notifyd to refuse the regular file", func() bool {
		return strings.Contains(d.log.String(), "notify socket not re-created")
	})
	if b, err := os.ReadFile(d.socket); err != nil || string(b) != "not a socket\n" {
		t.Fatalf("the regular file at the socket path holds %q (%v); notifyd must leave it alone", b, err)
	}
	wantHealth(t, d, 500, "0 workers ready\n")

	if err := os.Remove(d.socket); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the socket to be re-created", func() bool {
		return countLines(d.log.String(), socketRecreatedLine) == 1
	})
	registerReady(t, d, w)
	wantHealth(t, d, 200, "1 workers ready\n")
}

// TestSocketFileRenamedAwayIsRecreated moves the socket file to another
// name: notifyd binds a new socket at its path, and its state files, which
// share the directory, come and go all the while without being taken for
// the socket.
func TestSocketFileRenamedAwayIsRecreated(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	w1, w2 := sleeper(t), sleeper(t)
	registerReady(t, d, w1)

	if err := os.Rename(d.socket, d.socket+".moved"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the socket to be re-created", func() bool {
		return countLines(d.log.String(), socketRecreatedLine) == 1
	})
	registerReady(t, d, w2)
	wantHealth(t, d, 200, "2 workers ready\n")
	if got := countLines(d.log.String(), socketRemovedLine); got != 1 {
		t.Fatalf("%d log lines say the socket file was removed, want 1", got)
	}
}
