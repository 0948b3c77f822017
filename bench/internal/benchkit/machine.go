package benchkit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// goTimeout bounds one quick go command (go env, go version).
const goTimeout = time.Minute

// ModuleRoot is the directory of the go.mod that the go command sees from
// here: the notifyd repository when the benchmark called name is run from
// inside it. It fails, saying where to run from, unless the module holds
// cmd/notifyd and every path in need.
func ModuleRoot(ctx context.Context, name string, need ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, goTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root with go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module: run go run ./bench/%s from the notifyd repository root", name)
	}
	root := filepath.Dir(gomod)
	for _, n := range append([]string{"cmd/notifyd"}, need...) {
		if _, err := os.Stat(filepath.Join(root, n)); err != nil {
			return "", fmt.Errorf("module at %s has no %s: run from the notifyd repository", root, n)
		}
	}
	return root, nil
}

// Machine is a report's description of where it ran.
type Machine struct {
	Kernel    string    // release, as uname -r prints it
	CPUs      int       // CPUs this process may use, as nproc counts them
	CPUModel  string    // the first model name of /proc/cpuinfo
	GoVersion string    // the go command's version and platform: "go1.26.8 linux/amd64"
	Date      time.Time // when it was described, in UTC
}

// String is the machine as the reports name it: "Linux 6.1.0, 2 CPUs
// (nproc), AMD EPYC, go1.26.8 linux/amd64, 2026-11-24 20:19 UTC".
func (m Machine) String() string {
	return fmt.Sprintf("Linux %s, %d CPUs (nproc), %s, %s, %s",
		m.Kernel, m.CPUs, m.CPUModel, m.GoVersion, m.Date.Format("2006-01-02 15:04 MST"))
}

// DescribeMachine describes this machine. The Go version is that of the go
// command, which builds notifyd. A CPU model it cannot read is "unknown
// CPU"; it fails when uname or go version does.
func DescribeMachine(ctx context.Context) (Machine, error) {
	m := Machine{CPUs: runtime.NumCPU(), CPUModel: "unknown CPU", Date: time.Now().UTC()}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return m, fmt.Errorf("uname: %w", err)
	}
	m.Kernel = unix.ByteSliceToString(u.Release[:])
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, goTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "version").Output()
	if err != nil {
		return m, fmt.Errorf("go version: %w", err)
	}
	m.GoVersion = strings.TrimPrefix(strings.TrimSpace(string(out)), "go version ")
	return m, nil
}
