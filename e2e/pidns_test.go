package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// inPidNamespace runs a shell command as the first process of a new pid
// namespace, as a container's process would run, and ends it with the test.
func inPidNamespace(t *testing.T, env []string, script string) *exec.Cmd {
	t.Helper()
	unshare := need(t, "unshare")
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script)
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// A PID= from a nested pid namespace is a number notifyd cannot translate:
// in notifyd's namespace it names some other process, often a kernel thread
// that would never exit and never let the count drop.
func TestPidFromNestedNamespaceIsRefused(t *testing.T) {
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	cmd := inPidNamespace(t, nil, fmt.Sprintf(
		`sleep 1000 & %s --socket %s --ready --pid $! && echo processed; exec sleep 1000`,
		filepath.Join(bin, "notify"), d.socket))
	_ = cmd
	waitFor(t, "the refusal in notifyd's log", func() bool {
		return strings.Contains(d.log.String(), "which notifyd cannot see")
	})
	wantHealth(t, d, 500, "0 workers ready\n")
	if got := stateFiles(t, dir); len(got) != 0 {
		t.Fatalf("state files %v for a pid from another namespace", got)
	}
}

// The gunicorn hook sends PID= with the worker's own pid, which inside a
// container is the container's number for it. That one notifyd can
// translate: it is the sender itself.
func TestHookInNestedNamespaceIsCounted(t *testing.T) {
	python := gunicornPython(t)
	dir := shortDir(t)
	d := startNotifyd(t, dir)
	script := fmt.Sprintf(`exec %s -c 'import os, time, notifyd_gunicorn as n; n.send(%q, "READY=1\nPID=%%d" %% os.getpid()); time.sleep(1000)'`,
		python, d.socket)
	inPidNamespace(t, []string{"PYTHONPATH=" + repoRoot}, script)
	waitHealth(t, d, 200, "1 workers ready\n")
	inStep(t, d)
	pids := stateFiles(t, dir)
	if len(pids) != 1 {
		t.Fatalf("state files for %v, want one", pids)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nNSpid:\t"+fmt.Sprint(pids[0])+"\t1\n") {
		t.Fatalf("registered pid %d is not the namespace's first process:\n%s", pids[0], status)
	}
}

// gunicornPython is the interpreter gunicorn runs on, where the hook module
// must work.
func gunicornPython(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(need(t, "gunicorn"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	python := strings.TrimSpace(strings.TrimPrefix(first, "#!"))
	if python == "" {
		t.Fatal("gunicorn has no #! line")
	}
	return python
}
