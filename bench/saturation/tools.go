package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// tools are the programs the benchmark runs, found on PATH, and their
// versions as they state them.
type tools struct {
	gunicorn, gunicornVersion string
	wrk, wrkVersion           string
}

// findTools fails with a message naming every missing program and how to
// install it.
func findTools(ctx context.Context) (tools, error) {
	var t tools
	var missing []string
	var err error
	if t.gunicorn, err = exec.LookPath("gunicorn"); err != nil {
		missing = append(missing, "gunicorn")
	}
	if t.wrk, err = exec.LookPath("wrk"); err != nil {
		missing = append(missing, "wrk")
	}
	if len(missing) > 0 {
		it := "it"
		if len(missing) > 1 {
			it = "them"
		}
		return t, fmt.Errorf("%s not found on PATH: install %s (on Debian: apt-get install %s)",
			strings.Join(missing, " and "), it, strings.Join(missing, " "))
	}
	t.gunicornVersion = firstLine(ctx, t.gunicorn, "--version")
	// wrk has no version flag: it prints "wrk <version> [epoll] Copyright ..."
	// above its usage text.
	t.wrkVersion, _, _ = strings.Cut(firstLine(ctx, t.wrk, "--version"), " Copyright")
	return t, nil
}

// firstLine is the first line a program prints, whatever its exit status.
func firstLine(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if line == "" {
		return "unknown version"
	}
	return line
}
