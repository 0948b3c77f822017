package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// healthConn is one keep-alive HTTP/1.1 connection to notifyd's health
// endpoint, driven by hand: a request costs one write and one read, so the
// poll loop's resolution is close to what notifyd itself takes to answer.
type healthConn struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
}

func dialHealth(addr string) (*healthConn, error) {
	c, err := net.DialTimeout("tcp", addr, httpTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect to health endpoint %s: %w", addr, err)
	}
	return &healthConn{
		c:   c,
		br:  bufio.NewReader(c),
		req: []byte("GET / HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: notifyd-liveness-bench\r\n\r\n"),
	}, nil
}

func (h *healthConn) Close() error { return h.c.Close() }

// setDeadline bounds every request made until the next call.
func (h *healthConn) setDeadline(t time.Time) { h.c.SetDeadline(t) }

// answer is one health answer: the status code and the count in the body.
type answer struct {
	code  int
	ready int
}

// get makes one request. It fails when the answer is not a keep-alive
// "<n> workers ready\n".
func (h *healthConn) get() (answer, error) {
	if _, err := h.c.Write(h.req); err != nil {
		return answer{}, fmt.Errorf("send health request: %w", err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return answer{}, fmt.Errorf("read health answer: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	resp.Body.Close()
	if err != nil {
		return answer{}, fmt.Errorf("read health body: %w", err)
	}
	if resp.Close {
		return answer{}, fmt.Errorf("notifyd closed the keep-alive connection (status %d)", resp.StatusCode)
	}
	n, err := parseReady(body)
	if err != nil {
		return answer{}, err
	}
	return answer{code: resp.StatusCode, ready: n}, nil
}

// parseReady reads the count out of a "<n> workers ready\n" body.
func parseReady(body []byte) (int, error) {
	digits, ok := strings.CutSuffix(string(body), " workers ready\n")
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("health body %q is not \"<n> workers ready\\n\"", body)
	}
	return n, nil
}

// wantCode is the status every instance here must answer for n ready
// workers: they all run with --require 1.
func wantCode(n int) int {
	if n >= 1 {
		return http.StatusOK
	}
	return http.StatusInternalServerError
}

// is reports whether a says exactly n workers, with the matching status.
func (a answer) is(n int) bool { return a.ready == n && a.code == wantCode(n) }

func (a answer) mismatch(n int) error {
	return fmt.Errorf("health answered %d \"%d workers ready\", want %d \"%d workers ready\"", a.code, a.ready, wantCode(n), n)
}

// checkHealth asks d once, on a fresh connection, and fails unless it
// reports exactly n ready workers.
func checkHealth(d *daemon, n int) error {
	h, err := dialHealth(d.addr)
	if err != nil {
		return d.Explain(err)
	}
	defer h.Close()
	h.setDeadline(time.Now().Add(httpTimeout))
	a, err := h.get()
	if err != nil {
		return d.Explain(fmt.Errorf("%s: %w", d.Name, err))
	}
	if !a.is(n) {
		return fmt.Errorf("%s: %w", d.Name, a.mismatch(n))
	}
	return nil
}
