package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// moduleRoot is the directory of the go.mod that the go command sees from
// here: the notifyd repository when the benchmark is run from inside it.
func moduleRoot(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root with go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run go run ./bench/saturation from the notifyd repository root")
	}
	root := filepath.Dir(gomod)
	for _, need := range []string{"cmd/notifyd", appDir, seedConfig} {
		if _, err := os.Stat(filepath.Join(root, need)); err != nil {
			return "", fmt.Errorf("module at %s has no %s: run from the notifyd repository", root, need)
		}
	}
	return root, nil
}

// machine is the report's description of where it ran.
type machine struct {
	kernel     string
	cpus       int
	gomaxprocs int
	cpuModel   string
	goVersion  string
	date       time.Time
}

func (m machine) String() string {
	return fmt.Sprintf("Linux %s, %d CPUs (nproc), %s, %s %s/%s, %s",
		m.kernel, m.cpus, m.cpuModel, m.goVersion, runtime.GOOS, runtime.GOARCH, m.date.Format("2006-01-02 15:04 MST"))
}

// describeMachine reads what it can; a detail it cannot read says so rather
// than stopping the run.
func describeMachine() machine {
	m := machine{
		kernel:     "unknown kernel",
		cpus:       runtime.NumCPU(),
		gomaxprocs: runtime.GOMAXPROCS(0),
		cpuModel:   "unknown CPU",
		goVersion:  runtime.Version(),
		date:       time.Now().UTC(),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

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
