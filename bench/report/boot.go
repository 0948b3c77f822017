package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// bootTimeout bounds one boot; it only keeps a broken run from hanging.
const bootTimeout = 2 * time.Minute

func boot(ctx context.Context, l *lab, o options) (*section, error) {
	nd, err := l.startNotifyd(nil, "--require", strconv.Itoa(o.bootSize))
	if err != nil {
		return nil, err
	}
	defer nd.stop()
	seedDir, err := l.tempDir()
	if err != nil {
		return nil, err
	}
	want := fmt.Sprintf("%d workers ready\n", o.bootSize)
	var viaNotifyd, viaSeed []float64
	for round := range o.boots {
		progress("boot %d of %d", round+1, o.boots)
		// The seed-style server's port is known before the master runs,
		// so that polling can start with it.
		seedAddr, err := freePort()
		if err != nil {
			return nil, err
		}
		cmd := exec.Command("gunicorn", "--config", filepath.Join(l.root, seedConfig),
			"--chdir", filepath.Join(l.root, "examples/gunicorn"), "--bind", "127.0.0.1:0",
			"--workers", strconv.Itoa(o.bootSize), "--worker-class", "sync", "hello:app")
		cmd.Env = append(cleanEnv(), "NOTIFYD_SOCKET="+nd.socket, "SEED_HEALTHCHECK_BIND="+seedAddr,
			"SEED_HEALTHCHECK_DIRECTORY="+seedDir, "SEED_HEALTHCHECK_REQUIRE="+strconv.Itoa(o.bootSize),
			"PYTHONDONTWRITEBYTECODE=1")
		begin := time.Now()
		g, err := l.start(cmd, syscall.SIGTERM, "")
		if err != nil {
			return nil, err
		}
		times := make(chan [2]float64, 1)
		go func() {
			a, b := make(chan float64), make(chan float64)
			go func() { a <- healthyAfter(ctx, nd.url, want, begin) }()
			go func() { b <- healthyAfter(ctx, "http://"+seedAddr+"/", want, begin) }()
			times <- [2]float64{<-a, <-b}
		}()
		t := <-times
		g.stop()
		if t[0] < 0 || t[1] < 0 {
			log, _ := os.ReadFile(g.log)
			return nil, fmt.Errorf("gunicorn with %d workers was not healthy within %s through both (%v):\n%s", o.bootSize, bootTimeout, t, log)
		}
		viaNotifyd, viaSeed = append(viaNotifyd, t[0]), append(viaSeed, t[1])
		// The next boot starts from nothing: notifyd has seen the workers
		// go, and no pid file is left.
		if err := awaitStatus(nd.url, http.StatusInternalServerError, "0 workers ready\n"); err != nil {
			return nil, err
		}
		if err := clearDir(seedDir); err != nil {
			return nil, err
		}
	}
	nm, sm := median(viaNotifyd), median(viaSeed)
	s := &section{}
	s.p("## Boot to healthy\n\n")
	s.p("How long a deploy waits for an instance: gunicorn runs `hello.py` with %d sync workers and `%s`, whose hooks\n", o.bootSize, seedConfig)
	s.p("report every worker both to notifyd (`--require %d`) and to the seed-style server, which counts its own pid\n", o.bootSize)
	s.p("files: the floor, since a pid file is written in the same hook. From the master's start, both are polled every\n")
	s.p("10 ms until they answer `200 %d workers ready`; %d boots, each timed both ways at once.\n\n", o.bootSize, o.boots)
	s.p("| health check | median seconds to healthy | boots (s) |\n| --- | ---: | --- |\n")
	s.p("| notifyd | %.3f | %s |\n| seed-style pid files (the floor) | %.3f | %s |\n", nm, seconds(viaNotifyd), sm, seconds(viaSeed))
	s.goal(nm <= 1.05*sm, fmt.Sprintf("boot to healthy with %d workers: notifyd ≤ 1.05× the seed-style server", o.bootSize),
		"%.3f (%.3f s / %.3f s)", nm/sm, nm, sm)
	return s, nil
}

// healthyAfter polls url until it answers 200 with want and returns the
// seconds since begin, or -1 after bootTimeout.
func healthyAfter(ctx context.Context, url, want string, begin time.Time) float64 {
	for time.Since(begin) < bootTimeout && ctx.Err() == nil {
		if code, body, err := get(url); err == nil && code == http.StatusOK && body == want {
			return time.Since(begin).Seconds()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return -1
}

// awaitStatus asks url until it answers code with body.
func awaitStatus(url string, code int, body string) error {
	for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, b, err := get(url); err == nil && c == code && b == body {
			return nil
		}
	}
	return fmt.Errorf("%s did not answer %d %q within %s", url, code, body, startTimeout)
}

// freePort returns a loopback address whose port the kernel just chose.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// clearDir removes every file in dir.
func clearDir(dir string) error {
	entries, err := os.ReadDir(dir)
	for _, e := range entries {
		if err == nil {
			err = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return err
}

// seconds writes every boot's time, in the order measured.
func seconds(xs []float64) string {
	s := ""
	for i, x := range xs {
		if i > 0 {
			s += ", "
		}
		s += strconv.FormatFloat(x, 'f', 3, 64)
	}
	return s
}
