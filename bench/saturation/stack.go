package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/bench/internal/benchkit"
)

// Paths inside the repository.
const (
	appDir     = "examples/gunicorn"           // hello.py and the example config
	seedConfig = "bench/seed/gunicorn.conf.py" // both hooks and the seed-style server
)

// What the application is asked to run, and what its health route answers.
const (
	appWorkers    = 2
	appHealthPath = "/" // app.py's cheapest route: no sleep, no I/O
	appHealthBody = "hello\n"
)

// serverGOGC is notifyd's own GOGC: cmd/notifyd sets it unless the
// environment does. The bare server runs with it too, so that both collect
// garbage alike.
const serverGOGC = "400"

// stack is the application under test, its three health endpoints and the
// bare server.
type stack struct {
	notifyd, gunicorn *benchkit.Proc
	appAddr           string // host:port gunicorn listens on
	appURL            string // (a): the application's own route
	seedURL           string // (b): the seed-style server in the gunicorn master
	notifydURL        string // (c): notifyd's health endpoint
	bareURL           string // the bare server: the machine's floor, and throughput's physical limit
	healthBody        string // what notifyd and the seed-style server answer
	seedServer        string // the seed-style server's Server header: wsgiref's and Python's versions
}

var (
	gunicornListens = regexp.MustCompile(`Listening at: http://(\S+) \(`)
	seedListens     = regexp.MustCompile(`worker healthcheck listening at http://(\S+)`)
	bareListens     = regexp.MustCompile(`bare server listening at http://(\S+)`)
)

// startStack starts notifyd, then gunicorn with both hooks, then the bare
// server, and returns once all three health endpoints answer 200 with both
// workers counted.
func startStack(ctx context.Context, l *lab, root string) (*stack, error) {
	st := &stack{healthBody: strconv.Itoa(appWorkers) + " workers ready\n"}
	l.Progress("starting notifyd, and gunicorn with %d sync workers", appWorkers)
	socket, err := st.startNotifyd(ctx, l)
	if err != nil {
		return nil, err
	}
	if err := st.startGunicorn(ctx, l, root, socket); err != nil {
		return nil, err
	}
	if err := st.startBare(ctx, l); err != nil {
		return nil, err
	}
	checks := []struct{ name, url, want string }{
		{"(c) notifyd", st.notifydURL, st.healthBody},
		{"(b) the seed-style server", st.seedURL, st.healthBody},
		{"(a) the application's " + appHealthPath, st.appURL, appHealthBody},
		{"the bare server", st.bareURL, st.healthBody},
	}
	for _, c := range checks {
		a, err := awaitAnswer(ctx, c.name, c.url, c.want)
		if err != nil {
			return nil, fmt.Errorf("%w\ngunicorn log:\n%s", err, st.gunicorn.LogTail())
		}
		if c.url == st.seedURL {
			st.seedServer = a.server
		}
	}
	return st, nil
}

// serverEnv is the environment of the Go servers under test: the same for
// notifyd and the bare server.
func (l *lab) serverEnv() []string {
	return append(l.env[:len(l.env):len(l.env)], "GOGC="+serverGOGC, "GOMAXPROCS="+strconv.Itoa(runtime.GOMAXPROCS(0)))
}

// startNotifyd runs notifyd requiring every worker, and returns its socket.
func (st *stack) startNotifyd(ctx context.Context, l *lab) (string, error) {
	dir := filepath.Join(l.Dir, "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("create notifyd's state directory: %w", err)
	}
	socket := filepath.Join(dir, "notify.sock")
	cmd := exec.Command(l.Notifyd, "--socket", socket, "--dir", dir, "--bind", "127.0.0.1:0",
		"--require", strconv.Itoa(appWorkers), "--log-level", "info")
	cmd.Env = l.serverEnv()
	p, err := l.start("notifyd", cmd, syscall.SIGTERM, false)
	if err != nil {
		return "", err
	}
	m, err := p.AwaitLog(ctx, benchkit.NotifydStarted, startTimeout)
	if err != nil {
		return "", err
	}
	st.notifyd, st.notifydURL = p, "http://"+m[1]+"/"
	return socket, nil
}

// startGunicorn runs the example application with bench/seed's config, which
// installs the seed-style health check and notifyd's hook.
func (st *stack) startGunicorn(ctx context.Context, l *lab, root, socket string) error {
	seedDir := filepath.Join(l.Dir, "seed")
	if err := os.Mkdir(seedDir, 0o700); err != nil {
		return fmt.Errorf("create the seed-style pid file directory: %w", err)
	}
	cmd := exec.Command(l.tools.gunicorn,
		"--config", filepath.Join(root, seedConfig), "--chdir", filepath.Join(root, appDir),
		"--bind", "127.0.0.1:0", "--workers", strconv.Itoa(appWorkers), "--worker-class", "sync", "hello:app")
	cmd.Env = append(l.env[:len(l.env):len(l.env)],
		"NOTIFYD_SOCKET="+socket,
		"SEED_HEALTHCHECK_BIND=127.0.0.1:0",
		"SEED_HEALTHCHECK_DIRECTORY="+seedDir,
		"SEED_HEALTHCHECK_REQUIRE="+strconv.Itoa(appWorkers),
		"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in the repository
	)
	// SIGINT is gunicorn's quick shutdown; SIGTERM would let a worker finish
	// its sleep first.
	p, err := l.start("gunicorn", cmd, syscall.SIGINT, true)
	if err != nil {
		return err
	}
	st.gunicorn = p
	m, err := p.AwaitLog(ctx, gunicornListens, startTimeout)
	if err != nil {
		return err
	}
	st.appAddr, st.appURL = m[1], "http://"+m[1]+appHealthPath
	if m, err = p.AwaitLog(ctx, seedListens, startTimeout); err != nil {
		return err
	}
	st.seedURL = "http://" + m[1] + "/"
	return nil
}

// startBare runs this program's bare server, under notifyd's conditions,
// answering what notifyd answers.
func (st *stack) startBare(ctx context.Context, l *lab) error {
	cmd := exec.Command(l.self, bareCommand, "-body", st.healthBody)
	cmd.Env = l.serverEnv()
	p, err := l.start("bare", cmd, syscall.SIGTERM, false)
	if err != nil {
		return err
	}
	m, err := p.AwaitLog(ctx, bareListens, startTimeout)
	if err != nil {
		return err
	}
	st.bareURL = "http://" + m[1] + "/"
	return nil
}

// answer is one HTTP answer.
type answer struct {
	status int
	body   string
	server string // the Server header
}

func (a answer) String() string { return fmt.Sprintf("%d %q", a.status, a.body) }

// get makes one GET request on a fresh connection.
func get(ctx context.Context, url string) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return answer{}, fmt.Errorf("make request for %s: %w", url, err)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return answer{}, fmt.Errorf("read answer of %s: %w", url, err)
	}
	return answer{status: resp.StatusCode, body: string(body), server: resp.Header.Get("Server")}, nil
}

// awaitAnswer asks url until it answers 200 with exactly want.
func awaitAnswer(ctx context.Context, name, url, want string) (answer, error) {
	deadline := time.Now().Add(startTimeout)
	for {
		a, err := get(ctx, url)
		if err == nil && a.status == http.StatusOK && a.body == want {
			return a, nil
		}
		if ctx.Err() != nil {
			return a, ctx.Err()
		}
		if time.Now().After(deadline) {
			last := a.String()
			if err != nil {
				last = err.Error()
			}
			return a, fmt.Errorf("%s at %s did not answer 200 %q within %s; last answer: %s", name, url, want, startTimeout, last)
		}
		if err := benchkit.Pause(ctx, 50*time.Millisecond); err != nil {
			return a, err
		}
	}
}
