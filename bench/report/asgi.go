package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// asgiConns is wrk's connections against one uvicorn process: enough to keep
// it busy.
const asgiConns = 4

// asgiOverhead measures what notifyd.asgi's middleware costs a request:
// uvicorn serving examples/asgi/hello_asgi.py with the middleware reporting
// to a notifyd, against the same application without it.
func asgiOverhead(ctx context.Context, l *lab, o options) (*section, error) {
	nd, err := l.startNotifyd(nil, "--require", "1")
	if err != nil {
		return nil, err
	}
	defer nd.stop()
	var urls []string
	var apps []int
	for _, app := range []string{"hello_asgi:app", "hello_asgi:bare"} {
		url, p, err := l.startUvicorn(app, nd.socket)
		if err != nil {
			return nil, err
		}
		defer p.stop()
		urls = append(urls, url)
		apps = append(apps, p.pid())
	}
	if err := awaitAnswer(nd.url, "1 workers ready\n"); err != nil {
		return nil, err
	}
	r, err := alternate(ctx, nd.pid(), [2]string(urls), [2]int(apps), asgiConns, o)
	if err != nil {
		return nil, err
	}
	served, perThousand := r.served, r.perThousand
	runs := [][]float64{r.with, r.without}
	with, without := median(r.with), median(r.without)
	ratio := paired(r.with, r.without)
	added := r.cpuWith - r.cpuWithout
	s := &section{}
	s.p("## What the ASGI middleware costs a request\n\n")
	s.p("Two single-process uvicorn instances run `examples/asgi/hello_asgi.py` (`/` answers `hello`), one as\n")
	s.p("`hello_asgi:app`, wrapped in `notifyd.asgi.NotifydMiddleware` and reporting to a notifyd, one as\n")
	s.p("`hello_asgi:bare`, the same application without it (the floor). `%s` alternates between them,\n", wrkCommand(asgiConns, o.round, false))
	s.p("%d rounds each, after a warm-up; the ratio is the median of the rounds' ratios, each round with the\n", o.rounds)
	s.p("middleware against the round without right after it.\n\n")
	s.p("| instance | median requests/s | rounds |\n| --- | ---: | --- |\n")
	s.p("| with the middleware | %.0f | %s |\n| bare (the floor) | %.0f | %s |\n", with, rates(runs[0]), without, rates(runs[1]))
	s.p("\nuvicorn's CPU time per request: %s with the middleware, %s without; the middleware adds %s (the\n",
		µs(r.cpuWith), µs(r.cpuWithout), µs(added))
	s.p("gunicorn hooks' section gives the same figure for the hooks). notifyd's CPU time over the rounds with it,\n")
	s.p("%.0f requests in all: %.1f ms per 1,000 requests.\n", served, perThousand)
	s.goal(ratio >= 0.98, "ASGI middleware overhead: requests/s with `NotifydMiddleware` ≥ 0.98× the bare application",
		"%.3f (medians %.0f / %.0f requests/s; uvicorn's CPU %s a request more; notifyd %.1f ms CPU per 1,000 requests)", ratio, with, without, µs(added), perThousand)

	c, err := requestCost(ctx, l, o)
	if err != nil {
		return nil, err
	}
	mw, hooks := c.Middleware-c.ASGIBare, c.Hooks-c.GunicornBare
	s.p("\n### Against the gunicorn hooks, in one process\n\n")
	s.p("`%s` times, in one process and alternating round by round, %d rounds, the CPU time of a request\n", requestCostCommand, o.rounds)
	s.p("through the example application bare and wrapped in the middleware, and of a gunicorn request without and\n")
	s.p("with `notifyd_gunicorn`'s `pre_request` and `post_request`, all reporting through one reporter to a socket\n")
	how := "writing into its activity page, so that nothing is sent"
	if !c.Page {
		how = "sending datagrams, without an activity page"
	}
	s.p("the script empties between batches of 4 requests: the reporter is %s (%d of %d datagrams\n", how, c.Datagrams, c.Expected)
	s.p("arrived, as expected). Medians of the rounds:\n\n")
	s.p("| request | bare | reporting to notifyd | added |\n| --- | ---: | ---: | ---: |\n")
	s.p("| ASGI, `NotifydMiddleware` | %.2f µs | %.2f µs | %.2f µs |\n", c.ASGIBare/1e3, c.Middleware/1e3, mw/1e3)
	s.p("| gunicorn, the hooks | %.2f µs | %.2f µs | %.2f µs |\n", c.GunicornBare/1e3, c.Hooks/1e3, hooks/1e3)
	s.goal(c.Datagrams == c.Expected && mw <= 1.05*hooks, "ASGI middleware: the CPU it adds to a request ≤ 1.05× what the gunicorn hooks add",
		"%.3f (%.2f µs / %.2f µs a request, both %s)", mw/hooks, mw/1e3, hooks/1e3, how)
	return s, nil
}

// requestCostCommand runs bench/python/request_cost.py.
const requestCostCommand = "python3 bench/python/request_cost.py"

// cost is what bench/python/request_cost.py prints: nanoseconds of CPU per
// request, and the datagrams its socket received against those sent.
type cost struct {
	ASGIBare     float64 `json:"asgi_bare"`
	Middleware   float64 `json:"asgi_middleware"`
	GunicornBare float64 `json:"gunicorn_bare"`
	Hooks        float64 `json:"gunicorn_hooks"`
	Datagrams    int     `json:"datagrams"`
	Expected     int     `json:"datagrams_expected"`
	Page         bool    `json:"page"`
}

// requestCost runs bench/python/request_cost.py with o.rounds rounds.
func requestCost(ctx context.Context, l *lab, o options) (cost, error) {
	var c cost
	python, err := serverPython()
	if err != nil {
		return c, err
	}
	cmd := exec.CommandContext(ctx, python, "bench/python/request_cost.py", "--rounds", strconv.Itoa(o.rounds))
	cmd.Dir = l.root
	cmd.Env = append(cleanEnv(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.Output()
	if err != nil {
		return c, fmt.Errorf("%s: %w", requestCostCommand, err)
	}
	if err := json.Unmarshal(out, &c); err != nil {
		return c, fmt.Errorf("%s printed %q: %w", requestCostCommand, out, err)
	}
	return c, nil
}

// startUvicorn runs one uvicorn process serving app from examples/asgi on a
// loopback port the kernel found free, with NOTIFYD_SOCKET set to socket,
// and returns its URL once it answers. (uvicorn's --fd takes Unix sockets
// only, so the port cannot be passed bound.)
func (l *lab) startUvicorn(app, socket string) (string, *proc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	python, err := serverPython()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", strconv.Itoa(addr.Port),
		"--no-access-log", "--log-level", "warning", "--app-dir", filepath.Join(l.root, "examples/asgi"), app)
	cmd.Env = append(cleanEnv(), "NOTIFYD_SOCKET="+socket, "PYTHONPATH="+l.root, "PYTHONDONTWRITEBYTECODE=1")
	p, err := l.start(cmd, syscall.SIGTERM, "")
	if err != nil {
		return "", nil, err
	}
	url := fmt.Sprintf("http://%s/", addr)
	if err := awaitAnswer(url, "hello\n"); err != nil {
		p.stop()
		b, _ := os.ReadFile(p.log)
		return "", nil, fmt.Errorf("%w\n%s", err, b)
	}
	return url, p, nil
}

// serverPython is the interpreter gunicorn runs on, from its #! line: the
// one where the Python servers, uvicorn included, are installed.
func serverPython() (string, error) {
	path, err := exec.LookPath("gunicorn")
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	python, ok := strings.CutPrefix(line, "#!")
	if !ok {
		return "", fmt.Errorf("%s has no #! line to name its interpreter", path)
	}
	return strings.TrimSpace(python), nil
}
